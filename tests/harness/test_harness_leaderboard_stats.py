"""bench.stats (frontiers, hierarchical bootstrap, p-values, Holm) against hand / brute-force numbers, and
the leaderboard's matched-KL frontiers, contrasts and ranking end to end on synthetic runs."""
from __future__ import annotations

import itertools
import json
import math
import zlib

import numpy as np
import pytest

from bench.check import compare
from bench.leaderboard import NO_KL, _metric_stats, build_leaderboard, paired_vs_reference, t_interval
from bench.report import markdown, write_all
from bench.stats import (bootstrap_p_value, frontier, hierarchical_bootstrap, holm, nice_levels, resample,
                         value_at_kl, values_at_kl)

# ----------------------------------------------------------------------------------------------
# frontiers


def test_frontier_sorted_from_the_reference_and_interpolated_by_hand():
    # checkpoints in training order whose KL is not monotone (1.0, 0.5, 2.0): the curve is in KL order
    curve = frontier([(1.0, 0.5), (0.5, 0.4), (2.0, 0.45)], reference=0.2)
    assert curve.kl.tolist() == [0.0, 0.5, 1.0, 2.0] and curve.value.tolist() == [0.2, 0.4, 0.5, 0.45]
    assert value_at_kl(curve, 0.25) == pytest.approx(0.2 + 0.5 * (0.4 - 0.2))  # 0.30
    assert value_at_kl(curve, 0.75) == pytest.approx(0.45)
    assert value_at_kl(curve, 1.5) == pytest.approx(0.5 + 0.5 * (0.45 - 0.5))  # 0.475
    assert value_at_kl(curve, 0.0) == pytest.approx(0.2) and value_at_kl(curve, 2.0) == pytest.approx(0.45)
    # never extrapolated: beyond the last checkpoint, or below the first point, is "not reached"
    assert value_at_kl(curve, 2.0001) is None and value_at_kl(curve, -0.1) is None
    no_reference = frontier([(1.0, 0.5), (2.0, 0.7)])
    assert value_at_kl(no_reference, 0.5) is None and value_at_kl(no_reference, 1.25) == pytest.approx(0.55)


def test_frontier_ties_merge_to_their_mean_and_missing_points_drop():
    curve = frontier([(1.0, 0.2), (1.0, 0.4), (2.0, 1.0), (float("nan"), 9.0), (3.0, None)])
    assert curve.kl.tolist() == [1.0, 2.0] and curve.value.tolist() == pytest.approx([0.3, 1.0])
    assert value_at_kl(curve, 1.5) == pytest.approx(0.65)
    assert value_at_kl(frontier([]), 1.0) is None


def _brute_value_at(points: list[tuple[float, float]], k: float) -> float:
    """Independent float64 rule: drop non-finite, merge ties by mean, find the bracket by a loop."""
    merged: dict[float, list[float]] = {}
    for x, y in points:
        if math.isfinite(x) and math.isfinite(y):
            merged.setdefault(x, []).append(y)
    xs = sorted(merged)
    ys = [sum(merged[x]) / len(merged[x]) for x in xs]
    for i, x in enumerate(xs):
        if x == k:
            return ys[i]
        if i > 0 and xs[i - 1] < k < x:
            return ys[i - 1] + (k - xs[i - 1]) / (x - xs[i - 1]) * (ys[i] - ys[i - 1])
    return math.nan


def test_vectorised_interpolation_matches_a_brute_force_loop():
    rng = np.random.default_rng(7)
    kl = np.round(rng.uniform(0, 2, size=(300, 5)), 1)  # rounding makes ties common
    value = rng.normal(size=(300, 5))
    kl[::17, 2] = np.nan
    value[::23, 1] = np.inf
    for k in (0.0, 0.35, 1.0, 1.55, 2.0, 2.5):
        got = values_at_kl(kl, value, k)
        want = np.array([_brute_value_at(list(zip(a, b)), k) for a, b in zip(kl, value)])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)  # NaN where not reached, on both sides


def test_default_kl_levels_are_round_and_inside_every_frontier():
    assert nice_levels(1.234) == [0.35, 0.7, 1.05]  # 0.9 * 1.234 / 3 = 0.37 -> 0.35
    assert nice_levels(0.31) == [0.09, 0.18, 0.27]
    assert nice_levels(6.0) == [1.8 - 0.3, 3.0, 4.5]  # 1.8 -> 1.5
    assert nice_levels(0.0) == [] and nice_levels(float("nan")) == []


# ----------------------------------------------------------------------------------------------
# p-values and Holm


def test_holm_against_hand_examples():
    # m = 4, sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> max 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # textbook 5 tests: 0.05, 0.08, 0.09, then 0.08 and 0.05 raised to 0.09 (monotone)
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([None, 0.02, None, 0.04]) == pytest.approx([None, 0.04, None, 0.04])  # untested: not in m
    assert holm([]) == []


def test_bootstrap_p_value_by_hand():
    # 1 draw <= 0, 3 draws >= 0, B = 4: p = 2 min(1 + 1, 1 + 3) / 5
    assert bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(0.8)
    assert bootstrap_p_value(np.array([1.0, 2.0, 3.0])) == pytest.approx(0.5)  # never 0: 2 * 1 / 4
    assert bootstrap_p_value(np.zeros(10)) == 1.0
    assert bootstrap_p_value(np.array([np.nan, 1.0, 2.0, 3.0])) == pytest.approx(0.5)  # NaN draws left out
    assert bootstrap_p_value(np.array([np.nan])) is None


# ----------------------------------------------------------------------------------------------
# hierarchical bootstrap


def _values(rng, seeds, n_prompts, shift=0.0):
    return {s: {f"p{i}": float(rng.normal() + shift) for i in range(n_prompts)} for s in seeds}


def test_bootstrap_distribution_matches_brute_force_enumeration():
    """2 seeds x 3 prompts: every (seed draw, prompt draw) of the crossed bootstrap enumerated in float64
    (4 x 27 equally likely resamples); the sampled distribution matches its mean, SD and quantiles."""
    x = {0: {"a": 0.1, "b": 0.9, "c": 0.4}, 1: {"a": 0.5, "b": 1.6, "c": 0.2}}
    exact = []
    for seeds in itertools.product([0, 1], repeat=2):
        for prompts in itertools.product("abc", repeat=3):
            exact.append(sum(sum(x[s][p] for p in prompts) / 3 for s in seeds) / 2)
    exact = np.array(exact)
    res = resample({"u": x}, n_boot=40000, seed=3)
    draws = res.draws["u"]
    assert res.observed["u"] == pytest.approx((0.1 + 0.9 + 0.4 + 0.5 + 1.6 + 0.2) / 6)
    assert draws.mean() == pytest.approx(exact.mean(), abs=4 * exact.std() / math.sqrt(40000))
    assert draws.std() == pytest.approx(exact.std(), rel=0.03)
    for q in (10, 50, 90):
        assert np.percentile(draws, q) == pytest.approx(np.percentile(exact, q), abs=0.04)
    assert res.ci(lambda m: m["u"])["ci_over"] == "seeds and prompts"


def test_one_seed_is_a_prompt_bootstrap_with_the_textbook_standard_error():
    rng = np.random.default_rng(0)
    data = {"u": _values(rng, [0], 200)}
    out = hierarchical_bootstrap(data, lambda m: m["u"], n_boot=4000)
    vals = np.array(list(data["u"][0].values()))
    assert out["ci_over"] == "prompts" and out["n_seeds"] == 1 and out["n_prompts"] == 200
    assert out["estimate"] == pytest.approx(vals.mean())
    assert out["se"] == pytest.approx(vals.std() / math.sqrt(200), rel=0.06)  # plug-in se of a mean
    assert out["ci"][0] < vals.mean() < out["ci"][1]


def test_bootstrap_is_deterministic_and_a_key_does_not_depend_on_the_others():
    rng = np.random.default_rng(1)
    data = {"a": _values(rng, [0, 1, 2], 30), "b": _values(rng, [0, 1, 2], 30)}
    r1, r2 = resample(data, n_boot=500, seed=5), resample(data, n_boot=500, seed=5)
    assert all(np.array_equal(r1.draws[k], r2.draws[k]) for k in data)
    assert not np.array_equal(resample(data, n_boot=500, seed=6).draws["a"], r1.draws["a"])
    alone = resample({"a": data["a"]}, n_boot=500, seed=5)
    assert np.array_equal(alone.draws["a"], r1.draws["a"])
    stat = lambda m: m["a"] - m["b"]  # noqa: E731
    assert r1.ci(stat, null=0.0) == r2.ci(stat, null=0.0)


def test_pairing_identical_methods_differ_by_exactly_zero_and_shared_prompts_cancel():
    rng = np.random.default_rng(2)
    base = _values(rng, [0, 1, 2], 50)
    # b = 2 a + 3 on every (seed, prompt): under the same seed and prompt draws, b's draws are exactly 2 a + 3
    data = {"a": base, "same": {s: dict(v) for s, v in base.items()},
            "b": {s: {p: 2 * v + 3 for p, v in vals.items()} for s, vals in base.items()}}
    res = resample(data, n_boot=1000, seed=0)
    diff = res.ci(lambda m: m["a"] - m["same"], null=0.0)
    assert diff["estimate"] == 0.0 and diff["ci"] == [0.0, 0.0] and diff["p_value"] == 1.0
    np.testing.assert_allclose(res.draws["b"], 2 * res.draws["a"] + 3, rtol=1e-12)
    # a big per-prompt effect shared by two methods cancels in their difference (paired), not in each mean
    prompt_effect = {f"p{i}": 5.0 * rng.normal() for i in range(50)}
    paired = {m: {0: {p: e + rng.normal(0, 0.1) + (0.05 if m == "x" else 0.0) for p, e in prompt_effect.items()}}
              for m in ("x", "y")}
    res = resample(paired, n_boot=1000, seed=0)
    assert res.ci(lambda m: m["x"] - m["y"])["se"] < 0.05 < res.ci(lambda m: m["x"])["se"]


def _null_dataset(rng, n_seeds: int, n_prompts: int = 40, seed_sd: float = 0.0):
    prompt = rng.normal(0, 0.4, n_prompts)
    data = {}
    for m in ("a", "b"):
        data[m] = {}
        for s in range(n_seeds):
            offset = rng.normal(0, seed_sd) if seed_sd else 0.0
            noise = rng.normal(0, 0.3, n_prompts)
            data[m][s] = {f"p{i}": float(prompt[i] + noise[i] + offset) for i in range(n_prompts)}
    return data


@pytest.mark.parametrize("n_seeds,seed_sd,lo,hi", [(1, 0.0, 0.90, 0.99), (3, 0.05, 0.90, 1.0)])
def test_null_difference_coverage_and_false_alarm_rate(n_seeds, seed_sd, lo, hi):
    """200 simulated datasets with no true difference: the 95% CI covers 0 in ~95% of them (the crossed
    bootstrap over seeds is, if anything, conservative when seeds vary little) and p < 0.05 as often
    as the CI misses."""
    rng = np.random.default_rng(11)
    cover = alarms = 0
    for i in range(200):
        out = hierarchical_bootstrap(_null_dataset(rng, n_seeds, seed_sd=seed_sd), lambda m: m["a"] - m["b"],
                                     n_boot=400, seed=i, null=0.0)
        cover += out["ci"][0] <= 0.0 <= out["ci"][1]
        alarms += out["p_value"] < 0.05
    assert lo <= cover / 200 <= hi
    assert abs(alarms / 200 - (1 - cover / 200)) <= 0.03


def test_few_seeds_dominated_by_seed_variance_are_flagged():
    """seed_var_share tells the regimes apart (20 datasets each): ~0.2-0.3 without a seed effect, ~0.9
    when seeds dominate, where a bootstrap over 3 seeds is too narrow and the CI says so (caution)."""
    rng = np.random.default_rng(4)
    diff = lambda m: m["a"] - m["b"]  # noqa: E731
    loud = [hierarchical_bootstrap(_null_dataset(rng, 3, seed_sd=0.5), diff, n_boot=300, seed=i) for i in range(20)]
    calm = [hierarchical_bootstrap(_null_dataset(rng, 3), diff, n_boot=300, seed=i) for i in range(20)]
    assert np.median([o["seed_var_share"] for o in loud]) > 0.8
    assert np.median([o["seed_var_share"] for o in calm]) < 0.4
    assert sum("caution" in o for o in loud) >= 16 and sum("caution" in o for o in calm) <= 4
    assert "only 3 seeds" in next(o["caution"] for o in loud if "caution" in o)
    many = hierarchical_bootstrap(_null_dataset(rng, 6, seed_sd=0.5), diff, n_boot=300)
    assert many["seed_var_share"] > 0.5 and "caution" not in many  # enough seeds: no flag


def test_statistic_undefined_in_some_resamples_is_left_out_and_reported():
    rng = np.random.default_rng(5)
    data = {"kl": {0: {f"p{i}": float(rng.normal(1.0, 1.0)) for i in range(40)}},
            "v": {0: {f"p{i}": float(rng.normal()) for i in range(40)}}}
    res = resample(data, n_boot=1000, seed=0)
    k = res.observed["kl"] * 0.999  # just inside the observed frontier: outside it in ~half the resamples

    def at_k(m):
        return values_at_kl(np.stack([np.zeros_like(m["kl"]), m["kl"]], -1),
                            np.stack([np.zeros_like(m["v"]), m["v"]], -1), k)

    out = res.ci(at_k)
    assert out["estimate"] is not None and 0.2 < out["defined_frac"] < 0.8 and out["ci"] is not None


# ----------------------------------------------------------------------------------------------
# leaderboard: frontiers, contrasts, ranking

PROMPTS = [f"p{i}" for i in range(40)]
PROMPT_EFFECT = {p: 0.3 * math.sin(3 * i) for i, p in enumerate(PROMPTS)}
# per (method, seed, step): per-sample KL (constant over samples, so point KLs are known exactly)
KL = {("dpo", 0, 100): 0.5, ("dpo", 1, 100): 0.7, ("dpo", 0, 200): 1.0, ("dpo", 1, 200): 1.2,
      ("newpo", 0, 100): 0.4, ("newpo", 1, 100): 0.4, ("newpo", 0, 200): 1.6, ("newpo", 1, 200): 1.6}


def _run(method, seed, step, per_sample, label=None):
    rewards = [r["reward"] for r in per_sample]
    metrics = {"reward": sum(rewards) / len(rewards)}
    if any("kl" in r for r in per_sample):
        metrics["kl"] = sum(r["kl"] for r in per_sample) / len(per_sample)
    label = label or method
    return {"row_id": f"imdb/m/{label}", "task": "imdb", "model": "m", "method": method, "label": label,
            "hparams": {}, "seed": seed, "step": step, "run_key": f"{label}-{seed}-{step}",
            "scores": {"metrics": metrics, "per_sample": per_sample, "directions": {"reward": True, "kl": False}}}


def synthetic_runs(gain: dict[str, float], with_kl: bool = True, noise: float = 0.05, rng_seed: int = 0,
                   extra: dict[str, str] | None = None):
    """reference + 2 methods x 2 seeds x 2 steps, 40 prompts x 2 samples; reward = prompt effect +
    gain[method] * KL + noise (the same noise for every method: a cleanly paired comparison)."""
    rng = np.random.default_rng(rng_seed)
    noise_of = {(s, p, j): float(rng.normal(0, noise)) for s in (0, 1) for p in PROMPTS for j in (0, 1)}

    def samples(seed, kl, g):
        rows = []
        for p in PROMPTS:
            for j in (0, 1):
                row = {"prompt_id": p, "index": j, "reward": 0.1 + PROMPT_EFFECT[p] + g * kl + noise_of[(seed, p, j)]}
                if with_kl:
                    row["kl"] = kl
                rows.append(row)
        return rows

    runs = [_run("reference", s, None, samples(s, 0.0, 0.0)) for s in (0, 1)]
    for (method, seed, step), kl in KL.items():
        runs.append(_run(method, seed, step, samples(seed, kl, gain[method])))
        for label, source in (extra or {}).items():
            if source == method:
                runs.append(_run(method, seed, step, samples(seed, kl, gain[method]), label=label))
    return runs


def board_of(runs, **kwargs):
    return build_leaderboard("t", runs, manifest={}, config_hash="h", primary={"imdb": "reward"},
                             metric_info={"reward": {"higher_is_better": True}, "kl": {"higher_is_better": False}},
                             n_boot=kwargs.pop("n_boot", 1000), **kwargs)


def test_end_to_end_frontiers_contrasts_and_ranking():
    board = board_of(synthetic_runs({"dpo": 0.1, "newpo": 0.3}))
    # rows: one per (configuration, step), ids unique per step; the reference keeps its id
    ids = {r["id"]: r for r in board["rows"]}
    assert {"imdb/m/reference", "imdb/m/dpo@100", "imdb/m/dpo@200", "imdb/m/newpo@100", "imdb/m/newpo@200"} == set(ids)
    assert ids["imdb/m/dpo@200"]["step"] == 200 and ids["imdb/m/dpo@200"]["row_id"] == "imdb/m/dpo"
    assert ids["imdb/m/reference"]["step"] is None
    # default levels: 90% of the smallest max-KL (dpo: mean(1.0, 1.2) = 1.1) in 3 round steps: 0.33 -> 0.3
    assert board["kl_levels"] == {"imdb": [0.3, 0.6, 0.9]}
    fronts = {f["row_id"]: f for f in board["frontiers"]}
    dpo = fronts["imdb/m/dpo"]
    assert [p["step"] for p in dpo["points"]] == [None, 100, 200] and dpo["points"][0]["kind"] == "reference"
    assert [p["kl"] for p in dpo["points"]] == pytest.approx([0.0, 0.6, 1.1])
    ref_value, v100, v200 = (p["value"] for p in dpo["points"])
    # hand: reference mean = 0.1 + mean prompt effect + mean noise; matched value = linear interpolation
    assert ref_value == pytest.approx(ids["imdb/m/reference"]["metrics"]["reward"]["mean"])
    assert v100 == pytest.approx(ids["imdb/m/dpo@100"]["metrics"]["reward"]["mean"])
    assert dpo["matched"]["reward@KL=0.3"]["value"] == pytest.approx(ref_value + 0.5 * (v100 - ref_value))
    assert dpo["matched"]["reward@KL=0.9"]["value"] == pytest.approx(v100 + 0.6 * (v200 - v100))
    assert all(m["reached"] and m["ci"][0] <= m["value"] <= m["ci"][1] for m in dpo["matched"].values())
    assert dpo["points"][1]["ci_over"] == "seeds and prompts" and len(dpo["points"][1]["per_seed"]) == 2
    # contrasts: newpo - dpo at 3 levels; newpo's gain per nat is 0.3 vs 0.1: better at every level
    contrasts = board["contrasts"]
    assert [(c["label"], c["baseline_label"], c["kl"]) for c in contrasts] == [
        ("newpo", "dpo", 0.3), ("newpo", "dpo", 0.6), ("newpo", "dpo", 0.9)]
    newpo = fronts["imdb/m/newpo"]
    for c in contrasts:
        name = c["name"]
        assert c["difference"] == pytest.approx(newpo["matched"][name]["value"] - dpo["matched"][name]["value"])
        assert c["difference"] == pytest.approx(0.2 * c["kl"], abs=0.02)
        assert c["ci"][0] > 0 and c["verdict"] == "better" and c["p_holm"] >= c["p_value"]
    assert board["matched_kl"]["holm_family"] == 3 and board["matched_kl"]["baseline_method"] == "dpo"
    assert board["contrasts"][0]["p_holm"] == pytest.approx(min(1.0, 3 * min(c["p_value"] for c in contrasts)))
    # ranking by reward at the first level (raw reward and KL kept as columns)
    order = board["ranking"]["imdb"]["order"]
    assert [e["label"] for e in order] == ["newpo", "dpo"] and [e["rank"] for e in order] == [1, 2]
    assert order[1]["final"] == {"step": 200, "row": "imdb/m/dpo@200", "reward": ids["imdb/m/dpo@200"]["metrics"][
        "reward"]["mean"], "kl": pytest.approx(1.1)}
    json.dumps(board, allow_nan=False)  # strict JSON: no NaN anywhere
    # pobench check still reads it: a board passes against itself, per point
    comparisons = compare(board, board)
    assert comparisons and not [c for c in comparisons if c.failed]
    assert {c.row for c in comparisons} >= {"imdb/m/dpo@100", "imdb/m/newpo@200"}


def test_identical_configurations_no_difference_and_worse_methods_are_worse():
    board = board_of(synthetic_runs({"dpo": 0.2, "newpo": 0.2}, extra={"dpo-copy": "newpo"}))
    by = {(c["label"], c["kl"]): c for c in board["contrasts"]}
    for k in board["kl_levels"]["imdb"]:
        same = by[("dpo-copy", k)]
        assert same["difference"] == pytest.approx(0.0, abs=1e-12) and same["ci"][1] - same["ci"][0] < 1e-12
        assert same["verdict"] == "no significant difference"
    worse = board_of(synthetic_runs({"dpo": 0.3, "newpo": 0.05}))
    assert {c["verdict"] for c in worse["contrasts"]} == {"worse"}


def test_levels_beyond_a_frontier_are_not_reached_and_not_tested():
    board = board_of(synthetic_runs({"dpo": 0.1, "newpo": 0.3}), kl_levels=[0.5, 1.4])
    assert board["kl_levels"] == {"imdb": [0.5, 1.4]}
    dpo = next(f for f in board["frontiers"] if f["label"] == "dpo")
    assert dpo["matched"]["reward@KL=1.4"]["reached"] is False and dpo["matched"]["reward@KL=1.4"]["value"] is None
    assert "1.1" in dpo["matched"]["reward@KL=1.4"]["reason"]
    by_kl = {c["kl"]: c for c in board["contrasts"]}
    assert by_kl[1.4]["verdict"] == "not reached" and by_kl[1.4]["p_value"] is None and by_kl[1.4]["p_holm"] is None
    assert "dpo" in by_kl[1.4]["reason"] and by_kl[0.5]["verdict"] == "better"
    assert board["matched_kl"]["holm_family"] == 1
    md = markdown(board)
    assert "not reached" in md and "### Contrasts vs dpo" in md and "### Matched-KL ranking: imdb" in md


def test_without_kl_matched_metrics_are_absent_with_a_reason(tmp_path):
    board = board_of(synthetic_runs({"dpo": 0.1, "newpo": 0.3}, with_kl=False))
    assert board["kl_levels"] == {"imdb": []} and board["contrasts"] == []
    assert all(f["reason"] == NO_KL and f["points"] == [] for f in board["frontiers"])
    assert board["ranking"]["imdb"]["reason"] == NO_KL and board["ranking"]["imdb"]["kl"] is None
    written = write_all(board, tmp_path / "out")
    assert "frontier_imdb" not in written and "bars_imdb" in written  # no KL, no frontier plot
    assert "No matched-KL ranking" in written["md"].read_text()


def test_no_baseline_method_no_contrasts_and_legacy_runs_without_step():
    runs = synthetic_runs({"dpo": 0.1, "newpo": 0.3})
    board = board_of(runs, baseline_method="ipo")
    assert board["contrasts"] == [] and "no configuration of the baseline method 'ipo'" in \
        board["matched_kl"]["notes"]["imdb"]
    legacy = [dict(r) for r in runs if r["step"] in (None, 200)]
    for r in legacy:
        r.pop("step")
    board = board_of(legacy)
    assert {r["id"] for r in board["rows"]} == {"imdb/m/reference", "imdb/m/dpo", "imdb/m/newpo"}
    dpo = next(f for f in board["frontiers"] if f["label"] == "dpo")
    assert [p["kl"] for p in dpo["points"]] == pytest.approx([0.0, 1.1])  # the chord from the reference
    assert board["kl_levels"]["imdb"] == [0.3, 0.6, 0.9]


def test_report_files_show_ranking_contrasts_and_frontier_curves(tmp_path):
    board = board_of(synthetic_runs({"dpo": 0.1, "newpo": 0.3}))
    written = write_all(board, tmp_path / "out")
    for name in ("json", "csv", "md", "html", "frontier_imdb", "bars_imdb"):
        assert written[name].is_file(), name
    assert written["frontier_imdb"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = written["md"].read_text()
    assert "| 1 | newpo | m |" in md and "| imdb | newpo | dpo | reward | 0.3 |" in md and "better" in md
    html = written["html"].read_text()
    assert "id='contrasts'" in html and "id='ranking-imdb'" in html and "<tr class='better'>" in html
    assert html.count("data:image/png;base64,") == 2 and html.count("<tr class='measured'>") == 4
    assert "step" in written["csv"].read_text().splitlines()[0].split(",")


@pytest.mark.slow
def test_a_large_board_has_every_frontier_contrast_and_seed_aware_ci():
    """8 configurations x 3 seeds x 3 steps x 256 prompts (x 2 samples), 2000 resamples (its build time is
    not asserted: timings belong to benchmarks, not to tests on a shared machine)."""
    rng = np.random.default_rng(0)
    prompts = [f"p{i}" for i in range(256)]
    effect = rng.normal(0, 0.3, 256)
    runs = []

    def run(label, method, seed, step, kl, gain):
        noise = rng.normal(0, 0.3, (256, 2))
        kls = rng.normal(kl, 0.2, (256, 2)) if kl else np.zeros((256, 2))
        per = [{"prompt_id": p, "index": j, "reward": float(0.1 + effect[i] + gain * math.sqrt(max(kl, 0))
                                                              + noise[i, j]), "kl": float(kls[i, j])}
               for i, p in enumerate(prompts) for j in (0, 1)]
        return {"row_id": f"imdb/m/{label}", "task": "imdb", "model": "m", "method": method, "label": label,
                "hparams": {}, "seed": seed, "step": step, "run_key": f"{label}{seed}{step}",
                "scores": {"metrics": {"reward": float(np.mean([r["reward"] for r in per])),
                                       "kl": float(kls.mean())}, "per_sample": per,
                           "directions": {"reward": True, "kl": False}}}

    for seed in (0, 1, 2):
        runs.append(run("reference", "reference", seed, None, 0.0, 0.0))
        for c in range(8):
            for step in (100, 200, 300):
                runs.append(run(f"m{c}" if c else "dpo", f"m{c}" if c else "dpo", seed, step,
                                (0.4 + 0.05 * c) * step / 100, 0.13))
    board = build_leaderboard("big", runs, manifest={}, config_hash="h", primary={"imdb": "reward"},
                              metric_info={"reward": {"higher_is_better": True}, "kl": {"higher_is_better": False}})
    assert len(board["frontiers"]) == 8 and len(board["contrasts"]) == 7 * 3
    measured = [r for r in board["rows"] if r["kind"] == "measured"]
    assert len(measured) == 24 and all(r["metrics"]["reward"]["ci_over"] == "seeds and prompts (hierarchical "
                                       "bootstrap)" and r["vs_reference"]["reward"]["n_seeds"] == 3 for r in measured)


# ----------------------------------------------------------------------------------------------
# leaderboard rows: every CI of a row and of its difference to the reference with >= 2 seeds is the
# hierarchical bootstrap (seeds, then one prompt draw shared by every row of the task)

ROW_PROMPTS = [f"q{i:02d}" for i in range(20)]


def _row_run(label, method, seed, rewards, kls=None, extra=None, stderr=None, step=None):
    """One run: ``rewards`` prompt -> list of per-sample rewards (and ``kls`` the same shape)."""
    per = [{"prompt_id": p, "index": j, "reward": r, **({"kl": kls[p][j]} if kls else {})}
           for p, rs in rewards.items() for j, r in enumerate(rs)]
    metrics = {"reward": float(np.mean([r["reward"] for r in per]))}
    if kls:
        metrics["kl"] = float(np.mean([r["kl"] for r in per]))
    metrics.update(extra or {})
    scores = {"metrics": metrics, "per_sample": per,
              "directions": {"reward": True, "kl": False, "distinct_1": True, "acc": True}}
    if stderr:
        scores["stderr"] = stderr
    return {"row_id": f"imdb/m/{label}", "task": "imdb", "model": "m", "method": method, "label": label,
            "hparams": {}, "seed": seed, "step": step, "run_key": f"{label}-{seed}", "scores": scores}


def seeded_runs(seeds=(0, 1, 2), shift=0.3, seed_sd=0.2, rng_seed=0, distinct=True):
    """A reference and one dpo configuration (one step): seeds x 20 prompts x 2 samples, with a prompt
    effect shared by both, a per-seed training effect on dpo, sampling noise, per-sample KL, and the
    corpus-level distinct_1 (one value per run, no per-prompt values)."""
    rng = np.random.default_rng(rng_seed)
    effect = {p: float(rng.normal(0, 0.4)) for p in ROW_PROMPTS}
    runs = []
    for seed in seeds:
        train = float(rng.normal(0, seed_sd))
        for label, method, gain, kl in (("reference", "reference", 0.0, 0.0), ("dpo", "dpo", shift + train, 1.0)):
            rewards = {p: [effect[p] + gain + float(rng.normal(0, 0.3)) for _ in range(2)] for p in ROW_PROMPTS}
            kls = {p: [float(kl * rng.uniform(0.5, 1.5)) for _ in range(2)] for p in ROW_PROMPTS}
            extra = {"distinct_1": float(0.6 + 0.05 * rng.normal())} if distinct else {}
            runs.append(_row_run(label, method, seed, rewards, kls, extra, step=100 if method == "dpo" else None))
    return runs


def rows_board(runs, n_boot=300, boot_seed=4):
    return build_leaderboard("t", runs, manifest={}, config_hash="h", primary={"imdb": "reward"},
                             metric_info={"reward": {"higher_is_better": True}, "kl": {"higher_is_better": False},
                                          "distinct_1": {"higher_is_better": True}},
                             n_boot=n_boot, boot_seed=boot_seed)


def _slow_bootstrap(values, n_boot, boot_seed, statistic):
    """A slow loop over the same random draws as ``bench.stats.resample``: per resample, ONE prompt draw
    (multinomial counts from ``default_rng([boot_seed, 0, 0])``, over the sorted prompt universe) for
    every key and seed, and one seed draw per seed group (``default_rng([boot_seed, 1, crc32 of the
    group])``); a key's value is the count-weighted mean over drawn seeds of the count-weighted mean over
    drawn prompts. ``values``: key -> seed -> prompt -> value (every key on the same seeds). Returns the
    B statistics."""
    prompts = sorted({p for per_seed in values.values() for vals in per_seed.values() for p in vals})
    group = sorted({s for per_seed in values.values() for s in per_seed})
    prompt_counts = np.random.default_rng([boot_seed, 0, 0]).multinomial(
        len(prompts), np.full(len(prompts), 1.0 / len(prompts)), size=n_boot)
    crc = zlib.crc32(json.dumps([str(s) for s in group], default=str, sort_keys=True).encode())
    seed_counts = np.random.default_rng([boot_seed, 1, crc]).multinomial(
        len(group), np.full(len(group), 1.0 / len(group)), size=n_boot)
    out = []
    for b in range(n_boot):
        means = {}
        for key, per_seed in values.items():
            total = weight = 0.0
            for i, s in enumerate(group):
                if seed_counts[b, i] == 0:
                    continue
                num = sum(prompt_counts[b, j] * per_seed[s][p] for j, p in enumerate(prompts) if p in per_seed[s])
                den = sum(prompt_counts[b, j] for j, p in enumerate(prompts) if p in per_seed[s])
                total += seed_counts[b, i] * num / den
                weight += seed_counts[b, i]
            means[key] = total / weight
        out.append(statistic(means))
    return np.array(out)


def _prompt_values(runs, label, metric):
    return {r["seed"]: {p: float(np.mean([x[metric] for x in r["scores"]["per_sample"] if x["prompt_id"] == p]))
                        for p in ROW_PROMPTS} for r in runs if r["label"] == label}


def test_row_and_vs_reference_cis_are_the_hierarchical_bootstrap_of_a_slow_loop():
    runs = seeded_runs()
    board = rows_board(runs, n_boot=300, boot_seed=4)
    rows = {r["label"]: r for r in board["rows"]}
    dpo, ref = rows["dpo"], rows["reference"]
    values = {"dpo": _prompt_values(runs, "dpo", "reward"), "ref": _prompt_values(runs, "reference", "reward")}
    for label, row in (("dpo", dpo), ("ref", ref)):
        stats = row["metrics"]["reward"]
        draws = _slow_bootstrap({label: values[label]}, 300, 4, lambda m, label=label: m[label])
        assert stats["ci"] == pytest.approx(np.percentile(draws, [2.5, 97.5]).tolist(), rel=1e-12, abs=1e-12)
        assert stats["se"] == pytest.approx(draws.std(ddof=1), rel=1e-9)
        assert stats["ci_over"] == "seeds and prompts (hierarchical bootstrap)"
        assert (stats["n"], stats["n_seeds"], stats["n_prompts"], stats["n_boot"]) == (3, 3, 20, 300)
        # mean: the task's own aggregate (mean of the per-seed metric values)
        assert stats["mean"] == pytest.approx(np.mean([r["scores"]["metrics"]["reward"] for r in runs
                                                       if r["label"] == row["label"]]))
        assert stats["per_seed"] == [r["scores"]["metrics"]["reward"] for r in runs if r["label"] == row["label"]]
    # the paired difference: the same seed draw and the same prompt draw for policy and reference
    vs = dpo["vs_reference"]["reward"]
    draws = _slow_bootstrap(values, 300, 4, lambda m: m["dpo"] - m["ref"])
    assert vs["ci"] == pytest.approx(np.percentile(draws, [2.5, 97.5]).tolist(), rel=1e-12, abs=1e-12)
    assert vs["se"] == pytest.approx(draws.std(ddof=1), rel=1e-9)
    assert vs["mean"] == pytest.approx(np.mean([np.mean(list(values["dpo"][s].values())) -
                                                np.mean(list(values["ref"][s].values())) for s in (0, 1, 2)]))
    assert vs["p_value"] == pytest.approx(bootstrap_p_value(draws, 0.0))
    assert vs["ci_over"] == "seeds and prompts (paired hierarchical bootstrap)" and vs["n"] == 20
    # pairing matters: without a training effect, the shared prompt effect (SD 0.4) dominates each row's
    # se and cancels in the difference
    calm = {r["label"]: r for r in rows_board(seeded_runs(seed_sd=0.0))["rows"]}
    assert calm["dpo"]["vs_reference"]["reward"]["se"] < 0.6 * math.hypot(
        calm["dpo"]["metrics"]["reward"]["se"], calm["reference"]["metrics"]["reward"]["se"])
    # KL too (a lower-is-better metric), and the row's point on the frontier has the same draws
    kl_draws = _slow_bootstrap({"k": _prompt_values(runs, "dpo", "kl")}, 300, 4, lambda m: m["k"])
    assert dpo["metrics"]["kl"]["ci"] == pytest.approx(np.percentile(kl_draws, [2.5, 97.5]).tolist(), rel=1e-12)
    point = next(p for f in board["frontiers"] for p in f["points"] if p["row"] == dpo["id"])
    assert point["value_ci"] == pytest.approx(dpo["metrics"]["reward"]["ci"], rel=1e-12)
    assert point["kl_ci"] == pytest.approx(dpo["metrics"]["kl"]["ci"], rel=1e-12)
    # batching a task in one resample changes nothing: the functions alone give the same numbers
    by_seed = {r["seed"]: r["scores"] for r in runs if r["label"] == "dpo"}
    ref_by_seed = {r["seed"]: r["scores"] for r in runs if r["label"] == "reference"}
    alone = paired_vs_reference(by_seed, ref_by_seed, "reward", n_boot=300, boot_seed=4)
    assert alone["ci"] == pytest.approx(vs["ci"], rel=1e-12) and alone["p_value"] == vs["p_value"]
    assert _metric_stats(by_seed, "reward", n_boot=300, boot_seed=4)["ci"] == pytest.approx(
        dpo["metrics"]["reward"]["ci"], rel=1e-12)
    json.dumps(board, allow_nan=False)


def test_a_policy_equal_to_the_reference_differs_by_exactly_zero():
    runs = seeded_runs()
    twin = [dict(r, row_id="imdb/m/twin", label="twin", method="dpo", step=100,
                 run_key=f"twin-{r['seed']}") for r in runs if r["method"] == "reference"]
    board = rows_board(runs + twin)
    row = next(r for r in board["rows"] if r["label"] == "twin")
    for metric in ("reward", "kl", "distinct_1"):
        vs = row["vs_reference"][metric]
        assert vs["mean"] == 0.0 and vs["ci"] == [0.0, 0.0] and vs["se"] == 0.0 and vs["p_value"] == 1.0, metric
    ref = next(r for r in board["rows"] if r["kind"] == "reference")
    assert row["metrics"]["reward"]["ci"] == pytest.approx(ref["metrics"]["reward"]["ci"], rel=1e-12)


def test_corpus_level_metrics_are_bootstrapped_over_seeds():
    runs = seeded_runs()
    board = rows_board(runs, n_boot=300, boot_seed=4)
    dpo = next(r for r in board["rows"] if r["label"] == "dpo")
    stats = dpo["metrics"]["distinct_1"]
    per_seed = {r["seed"]: r["scores"]["metrics"]["distinct_1"] for r in runs if r["label"] == "dpo"}
    ref_seed = {r["seed"]: r["scores"]["metrics"]["distinct_1"] for r in runs if r["label"] == "reference"}
    assert stats["ci_over"] == "seeds (bootstrap)" and stats["n"] == 3 and stats["n_prompts"] is None
    assert stats["mean"] == pytest.approx(np.mean(list(per_seed.values())))
    one = {s: {"<corpus>": v} for s, v in per_seed.items()}  # one pseudo-prompt: only the seeds are drawn
    draws = _slow_bootstrap({"d": one}, 300, 4, lambda m: m["d"])
    assert stats["ci"] == pytest.approx(np.percentile(draws, [2.5, 97.5]).tolist(), rel=1e-12)
    assert "caution" in stats  # 3 seeds, all of the variance is seed-to-seed: flagged as too narrow
    vs = dpo["vs_reference"]["distinct_1"]
    paired = _slow_bootstrap({"d": one, "r": {s: {"<corpus>": v} for s, v in ref_seed.items()}}, 300, 4,
                             lambda m: m["d"] - m["r"])
    assert vs["ci_over"] == "seeds (paired bootstrap)"
    assert vs["ci"] == pytest.approx(np.percentile(paired, [2.5, 97.5]).tolist(), rel=1e-12)
    # one seed: no CI for a corpus-level value (as before), and no difference to test
    single = rows_board([r for r in runs if r["seed"] == 0])
    dpo1 = next(r for r in single["rows"] if r["label"] == "dpo")
    assert dpo1["metrics"]["distinct_1"]["se"] is None and "distinct_1" not in dpo1["vs_reference"]


def test_one_seed_keeps_the_t_intervals_over_prompts():
    runs = [r for r in seeded_runs() if r["seed"] == 1]
    board = rows_board(runs)
    dpo = next(r for r in board["rows"] if r["label"] == "dpo")
    prompts = _prompt_values(runs, "dpo", "reward")[1]
    ref = _prompt_values(runs, "reference", "reward")[1]
    want = t_interval(list(prompts.values()))
    stats = dpo["metrics"]["reward"]
    assert stats["ci_over"] == "prompts" and stats["n"] == 20 and stats["per_seed"] == [runs[1]["scores"]["metrics"][
        "reward"]]
    assert stats["se"] == pytest.approx(want["se"]) and stats["ci"] == pytest.approx(want["ci"])
    diffs = [prompts[p] - ref[p] for p in ROW_PROMPTS]
    vs = dpo["vs_reference"]["reward"]
    assert vs["ci_over"] == "prompts (paired)" and vs["n"] == 20
    assert vs["mean"] == pytest.approx(np.mean(diffs)) and vs["ci"] == pytest.approx(t_interval(diffs)["ci"])
    from scipy import stats as scipy_stats

    assert vs["p_value"] == pytest.approx(scipy_stats.ttest_1samp(diffs, 0.0).pvalue)
    # a policy with 3 seeds against a reference evaluated on one of them: paired on that seed alone
    mixed = [r for r in seeded_runs() if r["method"] == "dpo" or r["seed"] == 1]
    vs = next(r for r in rows_board(mixed)["rows"] if r["label"] == "dpo")["vs_reference"]["reward"]
    assert vs["ci_over"] == "prompts (paired)" and vs["mean"] == pytest.approx(np.mean(diffs))


def test_evaluator_stderr_metrics_keep_their_rule():
    runs = seeded_runs(distinct=False)
    for r in runs:
        same = r["method"] == "reference"  # one deterministic evaluation shared by the seeds
        r["scores"]["metrics"]["acc"] = 0.5 if same else 0.5 + 0.01 * r["seed"]
        r["scores"]["stderr"] = {"acc": 0.02}
    board = rows_board(runs)
    rows = {r["label"]: r for r in board["rows"]}
    assert rows["reference"]["metrics"]["acc"]["ci_over"] == "items"
    assert rows["reference"]["metrics"]["acc"]["se"] == 0.02
    acc = rows["dpo"]["metrics"]["acc"]
    assert acc["ci_over"] == "seeds (t-interval)" and acc["ci"] == pytest.approx(t_interval([0.5, 0.51, 0.52])["ci"])
    assert rows["dpo"]["metrics"]["reward"]["ci_over"] == "seeds and prompts (hierarchical bootstrap)"


def test_unequal_samples_per_prompt_keep_the_task_mean_inside_its_interval():
    runs = seeded_runs(distinct=False)
    for r in runs:  # a third sample on half of the prompts: the task's sample mean weights those more
        extra = [dict(x, index=2, reward=x["reward"] + 1.0) for x in r["scores"]["per_sample"]
                 if x["index"] == 0 and int(x["prompt_id"][1:]) % 2 == 0]
        r["scores"]["per_sample"] += extra
        r["scores"]["metrics"]["reward"] = float(np.mean([x["reward"] for x in r["scores"]["per_sample"]]))
    board = rows_board(runs)
    for row in board["rows"]:
        stats = row["metrics"]["reward"]
        prompt_weighted = np.mean([np.mean(list(v.values())) for v in _prompt_values(runs, row["label"], "reward")
                                   .values()])
        assert abs(stats["mean"] - prompt_weighted) > 0.01  # the two estimators differ here ...
        assert stats["ci"][0] <= stats["mean"] <= stats["ci"][1]  # ... and the interval sits around the mean


def test_row_statistics_do_not_depend_on_the_order_of_the_runs():
    """A board rebuilt from records must equal the original bit for bit, whatever order the runs come in."""
    runs = synthetic_runs({"dpo": 0.1, "newpo": 0.3}, extra={"dpo-copy": "newpo"})
    runs += [dict(r, row_id="imdb/m/other", label="other", method="other") for r in seeded_runs(seeds=(0, 1))
             if r["method"] == "dpo"]
    first = {r["id"]: (r["metrics"], r.get("vs_reference")) for r in rows_board(runs)["rows"]}
    shuffled = list(reversed(runs))
    shuffled.insert(0, shuffled.pop(7))
    assert {r["id"]: (r["metrics"], r.get("vs_reference")) for r in rows_board(shuffled)["rows"]} == first
