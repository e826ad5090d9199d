"""Aggregate run records into a leaderboard (``leaderboard.json``: what ``pobench check`` reads).

Statistics, per row (one configuration over its seeds) and metric. Per-prompt values are the unit:
a metric "has per-prompt values" when the task's ``scores["per_sample"]`` carries it (mean over a
prompt's samples); a metric computed on held-out pairs (``alignment_accuracy``) has per-pair values
(``scores["per_pair"]``), each pair its unit as a prompt is for the others (:func:`unit_values`); other
metrics (distinct-n, ...) are corpus-level, one value per seed. A metric's ``note`` is what every seed's
score stage noted about it (``scores["notes"]``, e.g. the reference row's alignment accuracy: 0.5 by
construction).

* ``mean``: mean over seeds of the per-seed metric (the task's own aggregate).
* ``ci`` (95%), ``se``, ``ci_over`` (what was resampled), ``n``, ``per_seed``, and for bootstrap
  intervals ``n_seeds``, ``n_prompts``, ``n_boot``, ``boot_seed`` (and ``seed_var_share`` /
  ``caution`` from ``bench.stats`` when few seeds dominate the variance):

  - >= 2 seeds, per-prompt values: the hierarchical bootstrap of ``bench.stats`` (resample the
    row's seeds, then prompts with one prompt draw shared by every row of the task, the draw of its
    matched-KL numbers when they cover the same prompts; percentile CI, se = SD of the resamples;
    ``ci_over: "seeds and prompts (hierarchical bootstrap)"``, ``n`` = seeds). The resampled
    statistic is the mean over seeds of the per-prompt mean; it equals ``mean`` when every prompt
    has the same number of samples (else the interval keeps its distances below and above that
    statistic, placed around ``mean``).
  - >= 2 seeds, corpus-level: the same seed draws, over the per-seed values (``ci_over: "seeds
    (bootstrap)"``). With 2-4 seeds such an interval is narrow and carries a ``caution``.
  - one seed (kept as before, not a prompt bootstrap): a t-interval over per-prompt means
    (``ci_over: "prompts"``, ``n`` = prompts) when the task gives per-sample values for the metric;
    a corpus-level metric of one seed has no CI (``se`` None: ``pobench check`` reports it as
    ``no-se``).
  - metrics of model-evaluation tasks (``eval_tasks``, e.g. lm-eval) that come with the evaluator's
    own standard error over its items (``scores["stderr"]``) keep their rule: with one seed, or when
    the seeds did not change the value (the reference's one deterministic evaluation, shared by its
    seeds), mean +- z * stderr (``ci_over: "items"``); otherwise a t-interval over the per-seed
    values (``ci_over: "seeds (t-interval)"``).

* ``vs_reference``: policy minus the reference policy of the same task and model, paired on the
  same seeds and prompts. With >= 2 seeds in common: the paired hierarchical bootstrap (both rows
  restricted to the (seed, prompt) cells they share, resampled with the same seed draw and the same
  prompt draw, so what the two share on a prompt and seed cancels; ``ci_over: "seeds and prompts (paired
  hierarchical bootstrap)"``), or for a corpus-level metric the paired bootstrap over seeds
  (``"seeds (paired bootstrap)"``); ``p_value`` is the two-sided bootstrap p of ``bench.stats``.
  With one seed in common (kept as before): the per-prompt differences with a t-interval over
  prompts and the paired t-test's p (``ci_over: "prompts (paired)"``); a corpus-level metric then
  has no difference. ``mean`` is the difference, ``n`` the number of paired prompts (of seeds for a
  corpus-level metric). This is the test behind "DPO beats the reference".

Every measured and reference row also says what it was computed from (:func:`run_facts`):
``data_sources`` (the evaluation prompts' and the training data's kind, location and fingerprint),
``prompts`` x ``samples_per_prompt``, ``train_steps`` and ``train_hparams``, ``skipped_records``.

Paper reference values are separate rows of ``kind: "paper"``, never mixed into ours.

Checkpoints: a run may carry ``step`` (the optimizer step of the evaluated checkpoint; None for the
reference and for runs without one). A row is one point, (configuration ``row_id``, ``step``): its
``id`` is ``row_id`` when step is None, else ``f"{row_id}@{step}"``; rows carry ``row_id`` and ``step``.

Matched-KL comparison (``bench.stats``; raw reward rankings mostly sort methods by how far they moved):

* ``frontiers``: per configuration with per-prompt KL, its points (reference at KL 0, then each
  step's seed-averaged (KL, primary metric)) in KL order, each with a hierarchical-bootstrap CI, and
  ``matched``: ``<metric>@KL=<k>`` at the task's ``kl_levels``, linear interpolation on the frontier
  with a bootstrap CI, ``reached: False`` where the frontier stops short (never extrapolated). The
  value of a point is the mean over seeds of the per-prompt mean (prompts weighted equally).
* ``kl_levels``: task -> levels (given, or 3 round levels up to 90% of the smallest max-KL over the
  task's configurations, so every configuration reaches them).
* ``contrasts``: every configuration vs each configuration of ``baseline_method`` on the same task
  and model, at every level: difference, CI, bootstrap p-value, Holm-adjusted p over every tested
  contrast of the board, verdict (better / worse / no significant difference / not reached).
* ``ranking``: task -> configurations ordered by the primary metric at the first KL level.

Tasks without per-sample KL (greedy sampling, ``score.kl`` off) or without per-prompt values of the
primary metric get no matched-KL numbers, and say why (``reason``).
"""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Hashable, Mapping, NamedTuple, Sequence

import numpy as np

from bench.stats import DEFAULT_BOOT, Resampled, holm, nice_levels, resample, values_at_kl

SCHEMA = "pobench.leaderboard/1"


def t_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, standard error and two-sided t confidence interval (None bounds when n < 2)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": None, "se": None, "ci": None, "n": 0}
    mean = sum(vals) / n
    if n < 2:
        return {"mean": mean, "se": None, "ci": None, "n": n}
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    se = math.sqrt(var / n)
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return {"mean": mean, "se": se, "ci": [mean - half, mean + half], "n": n}


def per_prompt_means(per_sample: Sequence[dict[str, Any]], metric: str) -> dict[str, float]:
    """prompt_id -> mean of ``metric`` over that prompt's samples (only numeric values)."""
    acc: dict[str, list[float]] = defaultdict(list)
    for row in per_sample:
        value = row.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "prompt_id" in row:
            acc[str(row["prompt_id"])].append(float(value))
    return {k: sum(v) / len(v) for k, v in acc.items() if v}


def unit_values(scores: Mapping[str, Any], metric: str) -> dict[str, float]:
    """A run's values of ``metric`` per unit of its CI: per prompt (:func:`per_prompt_means` of the
    samples), or, for a metric computed on held-out pairs (``alignment_accuracy``), per pair
    (``scores["per_pair"]``, each pair's id as its unit)."""
    return (per_prompt_means(scores.get("per_sample") or [], metric)
            or per_prompt_means(scores.get("per_pair") or [], metric))


def stderr_interval(mean: float, se: float, level: float = 0.95) -> dict[str, Any]:
    """A normal interval from a reported standard error (what lm-eval's stderr is meant for)."""
    from scipy import stats

    half = float(stats.norm.ppf(0.5 + level / 2)) * se
    return {"mean": mean, "se": se, "ci": [mean - half, mean + half], "ci_over": "items"}


# ----------------------------------------------------------------------------------------------
# row statistics: mean, CI and se of a row's metric, and its paired difference to the reference

ROWS_OVER = "seeds and prompts (hierarchical bootstrap)"
SEEDS_OVER = "seeds (bootstrap)"
PAIRED_OVER = "seeds and prompts (paired hierarchical bootstrap)"
PAIRED_SEEDS_OVER = "seeds (paired bootstrap)"
CORPUS = "<corpus>"  # the one pseudo-prompt of a corpus-level value: the prompt draw is then the identity

ScoresBySeed = Mapping[Any, Mapping[str, Any]]  # seed -> a run's scores


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _by_seed(seed_scores: ScoresBySeed | Sequence[Mapping[str, Any]]) -> dict[Any, Mapping[str, Any]]:
    return dict(seed_scores) if isinstance(seed_scores, Mapping) else dict(enumerate(seed_scores))


def _seed_values(by_seed: ScoresBySeed, metric: str) -> dict[Any, float]:
    return {s: float(sc["metrics"][metric]) for s, sc in by_seed.items() if _number(sc["metrics"].get(metric))}


def _has_stderr(by_seed: ScoresBySeed, metric: str) -> bool:
    return any(_number((sc.get("stderr") or {}).get(metric)) for sc in by_seed.values())


class _Request(NamedTuple):
    """What a bootstrap resamples: ``kind`` "prompts" (hierarchical) or "seeds" (corpus-level values);
    ``data``: one or two (policy, reference) mappings seed -> prompt id -> value."""

    kind: str
    data: tuple[dict[Any, dict[str, float]], ...]


def _metric_request(by_seed: ScoresBySeed, metric: str) -> _Request | None:
    """The bootstrap behind a row's metric; None when it has none (one seed, or an evaluator's stderr)."""
    values = _seed_values(by_seed, metric)
    if len(values) < 2 or _has_stderr(by_seed, metric):
        return None
    prompts = {s: unit_values(by_seed[s], metric) for s in values}
    if all(prompts.values()):
        return _Request("prompts", (prompts,))
    return _Request("seeds", ({s: {CORPUS: v} for s, v in values.items()},))


def _difference_request(by_seed: ScoresBySeed, ref_by_seed: ScoresBySeed, metric: str) -> _Request | None:
    """The paired bootstrap behind policy - reference: the (seed, prompt) cells both have, >= 2 seeds."""
    mine, theirs = _seed_values(by_seed, metric), _seed_values(ref_by_seed, metric)
    common = [s for s in mine if s in theirs]
    if len(common) < 2:
        return None
    policy: dict[Any, dict[str, float]] = {}
    reference: dict[Any, dict[str, float]] = {}
    for s in common:
        a = unit_values(by_seed[s], metric)
        b = unit_values(ref_by_seed[s], metric)
        shared = sorted(a.keys() & b.keys())
        if not shared:
            break
        policy[s], reference[s] = {p: a[p] for p in shared}, {p: b[p] for p in shared}
    else:
        return _Request("prompts", (policy, reference))
    return _Request("seeds", ({s: {CORPUS: mine[s]} for s in common}, {s: {CORPUS: theirs[s]} for s in common}))


def _bootstrap_stats(out: dict[str, Any], kind: str, paired: bool) -> dict[str, Any]:
    """A row's json fields from a ``Resampled.ci`` summary."""
    stats: dict[str, Any] = {"mean": out["estimate"], "se": out["se"], "ci": out["ci"]}
    if paired:
        stats["p_value"] = out.get("p_value")
        stats["ci_over"] = PAIRED_OVER if kind == "prompts" else PAIRED_SEEDS_OVER
        stats["n"] = out["n_prompts"] if kind == "prompts" else out["n_seeds"]
    else:
        stats["ci_over"] = ROWS_OVER if kind == "prompts" else SEEDS_OVER
        stats["n"] = out["n_seeds"]
    stats.update(n_seeds=out["n_seeds"], n_prompts=out["n_prompts"] if kind == "prompts" else None,
                 n_boot=out["n_boot"], boot_seed=out.get("boot_seed"))
    stats.update({k: out[k] for k in ("seed_var_share", "caution") if k in out})
    return stats


def _run_request(request: _Request, *, n_boot: int, boot_seed: int, level: float) -> dict[str, Any]:
    """One request on its own (its own prompt universe): what ``_Bootstraps`` does for a whole task."""
    keys = ("policy", "reference")[:len(request.data)]
    res = resample(dict(zip(keys, request.data)), n_boot=n_boot, seed=boot_seed, level=level)
    if len(keys) == 2:
        return _bootstrap_stats(res.ci(lambda m: m["policy"] - m["reference"], null=0.0), request.kind, True)
    return _bootstrap_stats(res.ci(lambda m: m["policy"]), request.kind, False)


class _Bootstraps:
    """The bootstraps behind the rows of a board, batched per task: ONE resample over every row's
    per-prompt values (one prompt draw for every row and metric of the task: the matched-KL
    numbers' draw when they cover the same prompts), one over the corpus-level values (the seed
    draws alone). A key's draws depend only on its seeds and the task's prompt universe
    (``bench.stats.resample``), so batching changes nothing but the time; rows with the same seeds
    share the seed draw, so policy and reference are paired."""

    def __init__(self, n_boot: int, boot_seed: int, level: float = 0.95):
        self.n_boot, self.boot_seed, self.level = n_boot, boot_seed, level
        self._data: dict[tuple[str, str], dict[Hashable, dict[Any, dict[str, float]]]] = defaultdict(dict)
        self._requests: dict[Hashable, tuple[str, _Request]] = {}
        self._res: dict[tuple[str, str], Resampled] = {}

    def add(self, task: str, key: Hashable, request: _Request | None) -> None:
        if request is None:
            return
        self._requests[key] = (task, request)
        for i, data in enumerate(request.data):
            self._data[(task, request.kind)][(key, i)] = data

    def run(self) -> None:
        for where, data in self._data.items():
            # keys in a fixed order: the same arrays (bit for bit) whatever order the runs came in
            data = dict(sorted(data.items(), key=lambda kv: repr(kv[0])))
            self._res[where] = resample(data, n_boot=self.n_boot, seed=self.boot_seed, level=self.level)

    def stats(self, key: Hashable) -> dict[str, Any] | None:
        if key not in self._requests:
            return None
        task, request = self._requests[key]
        res = self._res[(task, request.kind)]
        if len(request.data) == 2:
            out = res.ci(lambda m: m[(key, 0)] - m[(key, 1)], null=0.0)
        else:
            out = res.ci(lambda m: m[(key, 0)])
        return _bootstrap_stats(out, request.kind, paired=len(request.data) == 2)


def _metric_stats(seed_scores: ScoresBySeed | Sequence[Mapping[str, Any]], metric: str, *,
                  bootstrap: dict[str, Any] | None = None, n_boot: int = DEFAULT_BOOT, boot_seed: int = 0,
                  level: float = 0.95) -> dict[str, Any] | None:
    """A row's statistics of ``metric`` (see the module docstring). ``seed_scores``: seed -> scores (a
    list: its positions are the seeds). ``bootstrap``: the row's bootstrap already computed with the
    board's (``_Bootstraps.stats``); else it is computed here with ``n_boot``/``boot_seed``."""
    by_seed = _by_seed(seed_scores)
    per_seed = list(_seed_values(by_seed, metric).values())
    if not per_seed:
        return None
    reported_se = [s.get("stderr", {}).get(metric) for s in by_seed.values()]
    reported_se = [float(v) for v in reported_se if isinstance(v, (int, float))]
    if reported_se and (len(per_seed) == 1 or len(set(per_seed)) == 1):
        # one measurement (repeated): the seeds say nothing about its error, the evaluator does
        stats = stderr_interval(per_seed[0], max(reported_se))
        stats["n"] = None  # items behind the stderr: the evaluator's business (e.g. lm-eval's n-samples)
        stats["per_seed"] = per_seed
        return stats
    if bootstrap is None:
        request = _metric_request(by_seed, metric)
        if request is not None:
            bootstrap = _run_request(request, n_boot=n_boot, boot_seed=boot_seed, level=level)
    if bootstrap is not None:
        stats = dict(bootstrap)
        # the task's own aggregate, averaged over seeds; the percentile interval keeps its distances
        # below and above the resampled statistic's estimate (the same number up to rounding when
        # every prompt has the same number of samples), so it always contains the mean
        stats["mean"] = sum(per_seed) / len(per_seed)
        if stats["ci"] is not None:
            lo, hi = stats["ci"]
            estimate = bootstrap["mean"]
            stats["ci"] = [stats["mean"] - max(0.0, estimate - lo), stats["mean"] + max(0.0, hi - estimate)]
    elif len(per_seed) >= 2:  # an evaluator's metric whose seeds differ
        stats = t_interval(per_seed)
        stats["ci_over"] = "seeds (t-interval)"
    else:
        prompts = unit_values(next(iter(by_seed.values())), metric)
        stats = t_interval(list(prompts.values())) if len(prompts) >= 2 else {"se": None, "ci": None}
        stats["mean"] = per_seed[0]  # the task's own aggregate (may weight samples, not prompts)
        stats["n"] = len(prompts) if prompts else 1
        stats["ci_over"] = "prompts" if stats.get("ci") else None
    stats["per_seed"] = per_seed
    return stats


def paired_vs_reference(seed_scores: ScoresBySeed, ref_scores: ScoresBySeed, metric: str, *,
                        bootstrap: dict[str, Any] | None = None, n_boot: int = DEFAULT_BOOT, boot_seed: int = 0,
                        level: float = 0.95) -> dict[str, Any] | None:
    """Policy minus reference on the same seeds and prompts (see the module docstring): the paired
    hierarchical bootstrap with >= 2 seeds in common (``bootstrap``: already computed by the board's
    ``_Bootstraps``), else the per-prompt paired differences with a t-interval over prompts."""
    if bootstrap is not None:
        return dict(bootstrap)
    request = _difference_request(seed_scores, ref_scores, metric)
    if request is not None:
        return _run_request(request, n_boot=n_boot, boot_seed=boot_seed, level=level)
    diffs: dict[str, list[float]] = defaultdict(list)
    for seed, scores in seed_scores.items():
        ref = ref_scores.get(seed)
        if ref is None:
            continue
        mine = unit_values(scores, metric)
        theirs = unit_values(ref, metric)
        for prompt_id in sorted(mine.keys() & theirs.keys()):  # fixed order: sums identical across processes
            diffs[prompt_id].append(mine[prompt_id] - theirs[prompt_id])
    if len(diffs) < 2:
        return None
    stats = t_interval([sum(v) / len(v) for v in diffs.values()], level=level)
    stats["ci_over"] = "prompts (paired)"
    stats["p_value"] = None
    if stats["se"] is not None:
        from scipy import stats as _scipy_stats

        if stats["se"] > 0:
            t = stats["mean"] / stats["se"]
            stats["p_value"] = float(2 * _scipy_stats.t.sf(abs(t), stats["n"] - 1))
        else:
            stats["p_value"] = 1.0 if stats["mean"] == 0 else 0.0
    return stats


def _common_note(row_runs: Sequence[Mapping[str, Any]], metric: str) -> str | None:
    """The note every run of a row carries about ``metric`` (``scores["notes"]``), None when they differ."""
    notes = {(run["scores"].get("notes") or {}).get(metric) for run in row_runs}
    return notes.pop() if len(notes) == 1 else None


def run_facts(row_runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What a row was computed from (its seeds share it; the first run's): ``data_sources`` (``eval``:
    the evaluation prompts; ``prefdata`` / ``sft``: the training data; each kind, location,
    fingerprint), ``prompts`` x ``samples_per_prompt`` evaluated, ``train_steps`` and
    ``train_hparams`` (the method's, defaults filled in; None for the reference) and
    ``skipped_records`` (stage -> malformed records its task skipped; None when none were)."""
    first = row_runs[0]
    brief = lambda source: {k: source.get(k, "") for k in ("kind", "location", "fingerprint")}  # noqa: E731
    sources = {}
    evaluated = (first["scores"].get("task_record") or {}).get("data_source")
    if evaluated:
        sources["eval"] = brief(evaluated)
    for stage in ("prefdata", "sft"):
        if (first.get("data_sources") or {}).get(stage):
            sources[stage] = brief(first["data_sources"][stage])
    per_prompt: dict[str, int] = defaultdict(int)
    for row in first["scores"].get("per_sample") or []:
        if "prompt_id" in row:
            per_prompt[str(row["prompt_id"])] += 1
    train = first.get("train") or {}
    return {"data_sources": sources, "prompts": len(per_prompt) or None,
            "samples_per_prompt": max(per_prompt.values()) if per_prompt else None,
            "train_steps": train.get("steps"), "train_hparams": train.get("hparams"),
            "skipped_records": first.get("skipped_records") or None}


def _tested_vs_reference(name: str, metric_info: Mapping[str, dict[str, Any]]) -> bool:
    return metric_info.get(name, {}).get("higher_is_better") is not None or name == "kl"


def point_id(row_id: str, step: int | None) -> str:
    """The leaderboard row id of configuration ``row_id`` at checkpoint ``step``."""
    return row_id if step is None else f"{row_id}@{step}"


def _step_order(step: Any) -> tuple:
    return (0, 0) if step is None else (1, step)


def build_leaderboard(suite_name: str, runs: list[dict[str, Any]], *, manifest: dict[str, Any],
                      config_hash: str, primary: dict[str, str] | None = None,
                      metric_info: dict[str, dict[str, Any]] | None = None,
                      paper_rows: list[dict[str, Any]] | None = None, kl_budget: float | None = None,
                      kl_levels: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
                      baseline_method: str | None = "dpo", n_boot: int = DEFAULT_BOOT, boot_seed: int = 0,
                      alpha: float = 0.05) -> dict[str, Any]:
    """``runs``: one dict per (row, seed, step) with keys row_id, task, model, method, label, hparams,
    seed, scores (the score stage's scores.json), run_key, and optionally step (None or absent: the
    configuration's only point). The reference rows have method ``reference``.
    ``kl_levels``: matched-KL levels for every task (a list) or per task (a dict); None: a default per
    task. ``baseline_method``: the method every configuration is contrasted with (None: no contrasts).
    ``n_boot``/``boot_seed``: hierarchical bootstrap resamples and RNG seed; ``alpha``: the family-wise
    level of the Holm-corrected verdicts."""
    grouped: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        grouped[(run["row_id"], run.get("step"))].append(run)
    reference_by_task_model: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for (_, step), row_runs in sorted(grouped.items(), key=lambda kv: _step_order(kv[0][1])):
        if row_runs[0]["method"] == "reference":
            reference_by_task_model[(row_runs[0]["task"], row_runs[0]["model"])] = {
                r["seed"]: r["scores"] for r in row_runs}
    metric_info = dict(metric_info or {})
    # every row's metrics (and the metrics tested against the reference), then their bootstraps: one
    # resample per task (bench.stats), so every row of a task sees the same prompt draw
    points = []
    for (row_id, step), row_runs in grouped.items():
        row_runs.sort(key=lambda r: r["seed"])
        by_seed = {r["seed"]: r["scores"] for r in row_runs}
        names: list[str] = []
        for s in by_seed.values():
            for name in s["metrics"]:
                if name not in names:
                    names.append(name)
            for name, direction in s.get("directions", {}).items():
                metric_info.setdefault(name, {"higher_is_better": direction})
        points.append((row_id, step, row_runs, by_seed, names))
    boots = _Bootstraps(n_boot, boot_seed)
    for row_id, step, row_runs, by_seed, names in points:
        first = row_runs[0]
        ref = reference_by_task_model.get((first["task"], first["model"]))
        for name in names:
            boots.add(first["task"], ("metric", row_id, step, name), _metric_request(by_seed, name))
            if ref is not None and first["method"] != "reference" and _tested_vs_reference(name, metric_info):
                boots.add(first["task"], ("vs_reference", row_id, step, name),
                          _difference_request(by_seed, ref, name))
    boots.run()
    rows = []
    for row_id, step, row_runs, by_seed, names in points:
        first = row_runs[0]
        metrics = {}
        for name in names:
            stats = _metric_stats(by_seed, name, bootstrap=boots.stats(("metric", row_id, step, name)),
                                  n_boot=n_boot, boot_seed=boot_seed)
            if stats is not None:
                note = _common_note(row_runs, name)
                if note:
                    stats["note"] = note
                metrics[name] = stats
        row: dict[str, Any] = {
            "id": point_id(row_id, step), "row_id": row_id, "step": step,
            "kind": "reference" if first["method"] == "reference" else "measured",
            "task": first["task"], "model": first["model"], "method": first["method"], "label": first["label"],
            "hparams": first["hparams"], "seeds": [r["seed"] for r in row_runs], "metrics": metrics,
            "runs": [r["run_key"] for r in row_runs],
        }
        row.update(run_facts(row_runs))
        ref = reference_by_task_model.get((first["task"], first["model"]))
        if ref is not None and first["method"] != "reference":
            vs = {}
            for name in names:
                if not _tested_vs_reference(name, metric_info):
                    continue
                stats = paired_vs_reference(by_seed, ref, name, n_boot=n_boot, boot_seed=boot_seed,
                                            bootstrap=boots.stats(("vs_reference", row_id, step, name)))
                if stats is not None:
                    vs[name] = stats
            row["vs_reference"] = vs
        if kl_budget is not None and "kl" in metrics and metrics["kl"]["mean"] is not None:
            row["kl_budget_exceeded"] = metrics["kl"]["mean"] > kl_budget
        rows.append(row)
    for paper in paper_rows or []:
        paper_id = f"{paper['task']}/paper/{paper['method']}"
        rows.append({"id": paper_id, "row_id": paper_id, "step": None, "kind": "paper", "task": paper["task"],
                     "model": paper.get("model", "(paper)"), "method": paper["method"], "label": paper["method"],
                     "hparams": {}, "seeds": [], "source": paper["source"], "note": paper.get("note", ""),
                     "metrics": {paper["metric"]: {"mean": paper["value"], "se": None, "ci": None, "n": None,
                                                   "ci_over": None}}})
    _merge_paper_rows(rows)
    matched = matched_kl(runs, primary=primary or {}, metric_info=metric_info, rows=rows, kl_levels=kl_levels,
                         baseline_method=baseline_method, n_boot=n_boot, boot_seed=boot_seed, alpha=alpha)
    return {
        "schema": SCHEMA, "suite": suite_name, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_hash": config_hash, "primary_metric": primary or {}, "metrics": metric_info,
        "kl_budget": kl_budget, "rows": rows, **matched, "manifest": manifest,
    }


# ----------------------------------------------------------------------------------------------
# matched-KL frontiers, contrasts and ranking

NO_KL = ("no per-sample KL (samples not drawn from the policy itself at temperature 1 and top-p 1, or score.kl "
         "off): matched-KL metrics need KL(policy || reference) of each evaluated checkpoint")


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _brief(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: stats[k] for k in ("ci", "se", "ci_over", "n_seeds", "defined_frac", "seed_var_share", "caution")
            if k in stats}


class _Configuration:
    """One configuration (row_id) of a task: its steps, seeds and bootstrap keys."""

    def __init__(self, row_id: str, runs: list[dict[str, Any]]):
        first = runs[0]
        self.row_id, self.runs = row_id, runs
        self.task, self.model, self.method, self.label = first["task"], first["model"], first["method"], first["label"]
        self.steps = sorted({r.get("step") for r in runs}, key=_step_order)
        self.seeds = sorted({r["seed"] for r in runs})
        self.reason: str | None = None
        self.has_reference = False

    def key(self, step: Any, what: str) -> tuple:
        return (self.row_id, step, what)

    @property
    def reference_key(self) -> tuple:
        return (self.row_id, "<reference>", "value")

    def curve_at(self, k: float):
        """The statistic "value of this configuration's frontier at KL k" (arrays of resamples)."""
        steps, has_ref = self.steps, self.has_reference

        def statistic(m: Mapping[Hashable, np.ndarray]) -> np.ndarray:
            kls = [m[(self.row_id, s, "kl")] for s in steps]
            vals = [m[(self.row_id, s, "value")] for s in steps]
            if has_ref:
                kls.insert(0, np.zeros_like(kls[0]))
                vals.insert(0, m[self.reference_key])
            return values_at_kl(np.stack(kls, -1), np.stack(vals, -1), k)

        return statistic


def _levels_for(task: str, kl_levels: Sequence[float] | Mapping[str, Sequence[float]] | None
                ) -> list[float] | None:
    if kl_levels is None:
        return None
    if isinstance(kl_levels, Mapping):
        given = kl_levels.get(task)
        return None if given is None else [float(k) for k in given]
    return [float(k) for k in kl_levels]


def _metric_name(metric: str, k: float) -> str:
    return f"{metric}@KL={k:g}"


def matched_kl(runs: list[dict[str, Any]], *, primary: Mapping[str, str], metric_info: Mapping[str, dict[str, Any]],
               rows: list[dict[str, Any]] | None = None,
               kl_levels: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
               baseline_method: str | None = "dpo", n_boot: int = DEFAULT_BOOT, boot_seed: int = 0,
               alpha: float = 0.05, level: float = 0.95) -> dict[str, Any]:
    """The board's ``frontiers``, ``kl_levels``, ``contrasts``, ``ranking`` and ``matched_kl`` (settings
    and per-task notes), from the runs' per-sample values (see the module docstring)."""
    rows_by_id = {r["id"]: r for r in rows or []}
    frontiers: list[dict[str, Any]] = []
    contrasts: list[dict[str, Any]] = []
    ranking: dict[str, Any] = {}
    levels_out: dict[str, list[float]] = {}
    notes: dict[str, str] = {}
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    for task in tasks:
        task_runs = [r for r in runs if r["task"] == task]
        metric = primary.get(task)
        by_config: dict[str, list[dict[str, Any]]] = defaultdict(list)
        references: dict[str, dict[Any, dict[str, Any]]] = defaultdict(dict)
        for run in task_runs:
            if run["method"] == "reference":
                references[run["model"]][run["seed"]] = run["scores"]
            else:
                by_config[run["row_id"]].append(run)
        configs = [_Configuration(row_id, cruns) for row_id, cruns in by_config.items()]
        higher = metric_info.get(metric, {}).get("higher_is_better", True) if metric else True
        higher = higher is not False
        if not metric:
            notes[task] = "the task has no primary metric"
            for c in configs:
                c.reason = notes[task]
        # per-prompt values: key -> seed -> prompt -> value
        data: dict[Hashable, dict[Any, dict[str, float]]] = defaultdict(dict)
        groups: dict[Hashable, tuple] = {}
        for c in configs:
            if c.reason:
                continue
            mine: dict[Hashable, dict[Any, dict[str, float]]] = defaultdict(dict)
            for run in c.runs:
                per_sample = run["scores"].get("per_sample", [])
                value = unit_values(run["scores"], metric)
                kl = per_prompt_means(per_sample, "kl")
                if not value:
                    c.reason = f"{metric} has no per-prompt values (a corpus-level metric?)"
                    break
                if not kl:
                    c.reason = NO_KL
                    break
                mine[c.key(run.get("step"), "value")][run["seed"]] = value
                mine[c.key(run.get("step"), "kl")][run["seed"]] = kl
            if c.reason:
                continue
            ref = references.get(c.model, {})
            ref_values = {s: unit_values(ref[s], metric) for s in c.seeds if s in ref}
            ref_values = {s: v for s, v in ref_values.items() if v}
            if ref_values:  # the reference evaluated with this configuration's seeds (paired on them)
                c.has_reference = True
                mine[c.reference_key] = ref_values
            for key, per_seed in mine.items():
                data[key] = per_seed
                groups[key] = tuple(c.seeds)
        usable = [c for c in configs if not c.reason]
        if not usable:
            if configs and task not in notes:
                notes[task] = configs[0].reason or "no configuration"
            levels_out[task] = []
            for c in configs:
                frontiers.append(_frontier_entry(c, metric, None))
            ranking[task] = {"metric": metric, "kl": None, "higher_is_better": higher, "reason": notes.get(task),
                             "order": []}
            continue
        res = resample(data, n_boot=n_boot, seed=boot_seed, seed_groups=groups, level=level)
        max_kl = {c.row_id: max((res.observed[c.key(s, "kl")] for s in c.steps
                                 if math.isfinite(res.observed[c.key(s, "kl")])), default=math.nan)
                  for c in usable}
        levels = _levels_for(task, kl_levels)
        if levels is None:
            finite = [v for v in max_kl.values() if math.isfinite(v)]
            levels = nice_levels(min(finite)) if finite else []
            if not levels:
                notes[task] = "no configuration moved away from the reference (max KL <= 0): no default KL levels"
        levels_out[task] = levels
        matched: dict[str, dict[float, dict[str, Any]]] = {}
        for c in usable:
            matched[c.row_id] = {}
            for k in levels:
                stats = res.ci(c.curve_at(k))
                entry = {"kl": k, "reached": stats["estimate"] is not None, "value": stats["estimate"],
                         **_brief(stats)}
                if not entry["reached"]:
                    entry["reason"] = f"frontier ends at KL {max_kl[c.row_id]:.3g} < {k:g}"
                matched[c.row_id][k] = entry
        for c in configs:
            frontiers.append(_frontier_entry(c, metric, res if not c.reason else None, matched.get(c.row_id),
                                             max_kl.get(c.row_id)))
        # contrasts with the baseline method's configurations (same task and model)
        baselines = [c for c in usable if baseline_method is not None and c.method == baseline_method]
        if baseline_method is not None and not baselines:
            notes.setdefault(task, f"no configuration of the baseline method {baseline_method!r}: no contrasts")
        for c in usable:
            if c.method == baseline_method:
                continue
            for b in (b for b in baselines if b.model == c.model):
                for k in levels:
                    contrasts.append(_contrast(res, c, b, k, metric, matched, higher))
        # ranking by the primary metric at the first level
        first = levels[0] if levels else None

        def order_key(c: _Configuration) -> tuple:
            value = matched.get(c.row_id, {}).get(first, {}).get("value") if first is not None else None
            return (value is None, 0.0 if value is None else (-value if higher else value), c.label)

        order = []
        for c in sorted(configs, key=order_key):
            at = {_metric_name(metric, k): {"value": e["value"], "ci": e.get("ci"), "reached": e["reached"]}
                  for k, e in matched.get(c.row_id, {}).items()}
            value = at.get(_metric_name(metric, first), {}).get("value") if first is not None else None
            last = rows_by_id.get(point_id(c.row_id, c.steps[-1]), {})
            raw = {"step": c.steps[-1], "row": point_id(c.row_id, c.steps[-1]),
                   metric: ((last.get("metrics") or {}).get(metric) or {}).get("mean"),
                   "kl": ((last.get("metrics") or {}).get("kl") or {}).get("mean")}
            order.append({"rank": None, "row_id": c.row_id, "label": c.label, "method": c.method, "model": c.model,
                          "value": value, "at_kl": at, "final": raw, "reason": c.reason})
        for rank, entry in enumerate((e for e in order if e["value"] is not None), start=1):
            entry["rank"] = rank
        ranking[task] = {"metric": metric, "kl": first, "name": _metric_name(metric, first) if first else None,
                         "higher_is_better": higher, "reason": notes.get(task) if first is None else None,
                         "order": order}
    adjusted = holm([c["p_value"] for c in contrasts])
    for c, p in zip(contrasts, adjusted):
        c["p_holm"] = p
        c["verdict"] = _verdict(c, p, alpha)
    return {"kl_levels": levels_out, "frontiers": frontiers, "contrasts": contrasts, "ranking": ranking,
            "matched_kl": {"baseline_method": baseline_method, "alpha": alpha, "level": level, "n_boot": n_boot,
                           "boot_seed": boot_seed, "holm_family": sum(p is not None for p in adjusted),
                           "notes": notes,
                           "method": "hierarchical bootstrap (seeds, then one prompt draw shared by every method "
                                     "and seed); percentile CIs; two-sided p = 2 min(1 + #(d<=0), 1 + #(d>=0)) "
                                     "/ (B + 1); Holm over every tested contrast of the board"}}


def _frontier_entry(c: _Configuration, metric: str | None, res: Resampled | None,
                    matched: dict[float, dict[str, Any]] | None = None, max_kl: float | None = None
                    ) -> dict[str, Any]:
    entry: dict[str, Any] = {"task": c.task, "model": c.model, "row_id": c.row_id, "label": c.label,
                             "method": c.method, "metric": metric, "seeds": c.seeds, "steps": c.steps,
                             "reason": c.reason, "points": [], "matched": {}, "max_kl": _none_if_nan(max_kl)}
    if res is None:
        return entry
    points = []
    if c.has_reference:
        stats = res.ci(lambda m: m[c.reference_key])
        points.append({"step": None, "kind": "reference", "row": None, "kl": 0.0, "kl_ci": None,
                       "value": _none_if_nan(res.observed[c.reference_key]), "value_ci": stats["ci"],
                       "n_seeds": res.n_seeds[c.reference_key],
                       "per_seed": [{"seed": s, "kl": 0.0, "value": v}
                                    for s, v in res.per_seed[c.reference_key].items()]})
    for step in c.steps:
        kkey, vkey = c.key(step, "kl"), c.key(step, "value")
        kl_stats = res.ci(lambda m, kkey=kkey: m[kkey])
        value_stats = res.ci(lambda m, vkey=vkey: m[vkey])
        points.append({"step": step, "kind": "checkpoint", "row": point_id(c.row_id, step),
                       "kl": _none_if_nan(res.observed[kkey]), "kl_ci": kl_stats["ci"],
                       "value": _none_if_nan(res.observed[vkey]), "value_ci": value_stats["ci"],
                       "n_seeds": res.n_seeds[vkey], "ci_over": value_stats["ci_over"],
                       "per_seed": [{"seed": s, "kl": res.per_seed[kkey].get(s), "value": v}
                                    for s, v in res.per_seed[vkey].items()]})
    points.sort(key=lambda p: (-math.inf if p["kind"] == "reference" else
                               (p["kl"] if p["kl"] is not None else math.inf)))
    entry["points"] = points
    entry["matched"] = {_metric_name(metric, k): e for k, e in (matched or {}).items()}
    if not c.has_reference:
        entry["note"] = "no reference row for this task/model: the frontier starts at its lowest-KL checkpoint"
    return entry


def _contrast(res: Resampled, c: _Configuration, b: _Configuration, k: float, metric: str,
              matched: dict[str, dict[float, dict[str, Any]]], higher: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"task": c.task, "model": c.model, "row_id": c.row_id, "label": c.label,
                           "method": c.method, "baseline_row_id": b.row_id, "baseline_label": b.label,
                           "metric": metric, "kl": k, "name": _metric_name(metric, k),
                           "higher_is_better": higher, "difference": None, "ci": None, "se": None,
                           "p_value": None}
    short = [x.label for x in (c, b) if not matched[x.row_id][k]["reached"]]
    if short:
        out["reason"] = "not reached by " + " and ".join(
            f"{x.label} ({matched[x.row_id][k]['reason']})" for x in (c, b) if x.label in short)
        return out
    cs, bs = c.curve_at(k), b.curve_at(k)
    stats = res.ci(lambda m: cs(m) - bs(m), null=0.0)
    out.update(difference=stats["estimate"], ci=stats["ci"], se=stats["se"], p_value=stats.get("p_value"),
               ci_over=stats["ci_over"], n_seeds=stats["n_seeds"], n_prompts=stats["n_prompts"],
               defined_frac=stats["defined_frac"])
    out.update({name: stats[name] for name in ("seed_var_share", "caution") if name in stats})
    return out


def _verdict(contrast: dict[str, Any], p_holm: float | None, alpha: float) -> str:
    if contrast.get("reason", "").startswith("not reached"):
        return "not reached"
    if p_holm is None or contrast["difference"] is None or p_holm >= alpha:
        return "no significant difference"
    good = contrast["difference"] > 0 if contrast["higher_is_better"] else contrast["difference"] < 0
    return "better" if good else "worse"


def _merge_paper_rows(rows: list[dict[str, Any]]) -> None:
    """Several published metrics of one paper row become one row with several metrics."""
    merged: dict[str, dict[str, Any]] = {}
    keep = []
    for row in rows:
        if row["kind"] != "paper":
            keep.append(row)
            continue
        if row["id"] in merged:
            merged[row["id"]]["metrics"].update(row["metrics"])
        else:
            merged[row["id"]] = row
            keep.append(row)
    rows[:] = keep


def load_leaderboard(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "leaderboard.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no leaderboard here (run `pobench run SUITE` first)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {data.get('schema')!r} is not {SCHEMA!r}")
    return data


def metric_columns(board: dict[str, Any]) -> list[str]:
    """Metrics in display order: each task's primary metric first, then kl, then the rest."""
    names: list[str] = []
    for name in board.get("primary_metric", {}).values():
        if name not in names:
            names.append(name)
    if any("kl" in r["metrics"] for r in board["rows"]):
        names.append("kl") if "kl" not in names else None
    for row in board["rows"]:
        for name in row["metrics"]:
            if name not in names:
                names.append(name)
    return names
