"""Aggregate run records into a leaderboard (``leaderboard.json``: what ``pobench check`` reads).

Statistics, per row (one configuration over its seeds) and metric:

* ``mean``: mean over seeds of the per-seed metric.
* ``ci`` (95%): with >= 2 seeds, a t-interval over the per-seed values (``ci_over: "seeds"``);
  with one seed, a t-interval over per-prompt means (``ci_over: "prompts"``) when the task gives
  per-sample values for the metric; corpus-level metrics (e.g. distinct-n) of one seed have none.
  Metrics of model-evaluation tasks (``eval_tasks``, e.g. lm-eval) come with the evaluator's own
  standard error over its items (``scores["stderr"]``): with one seed, or when the seeds did not
  change the value (the reference's one deterministic evaluation, shared by its seeds), the
  interval is mean +- z * stderr (``ci_over: "items"``).
* ``vs_reference``: the paired difference to the reference policy's samples on the same prompts
  and seed (per prompt: policy mean - reference mean, averaged over seeds), with a t-interval
  over prompts. This is the test behind "DPO beats the reference".

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
from typing import Any, Hashable, Mapping, Sequence

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


def stderr_interval(mean: float, se: float, level: float = 0.95) -> dict[str, Any]:
    """A normal interval from a reported standard error (what lm-eval's stderr is meant for)."""
    from scipy import stats

    half = float(stats.norm.ppf(0.5 + level / 2)) * se
    return {"mean": mean, "se": se, "ci": [mean - half, mean + half], "ci_over": "items"}


def _metric_stats(seed_scores: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    per_seed = [s["metrics"].get(metric) for s in seed_scores]
    per_seed = [float(v) for v in per_seed if isinstance(v, (int, float))]
    if not per_seed:
        return None
    reported_se = [s.get("stderr", {}).get(metric) for s in seed_scores]
    reported_se = [float(v) for v in reported_se if isinstance(v, (int, float))]
    if reported_se and (len(per_seed) == 1 or len(set(per_seed)) == 1):
        # one measurement (repeated): the seeds say nothing about its error, the evaluator does
        stats = stderr_interval(per_seed[0], max(reported_se))
        stats["n"] = None  # items behind the stderr: the evaluator's business (e.g. lm-eval's n-samples)
        stats["per_seed"] = per_seed
        return stats
    if len(per_seed) >= 2:
        stats = t_interval(per_seed)
        stats["ci_over"] = "seeds"
    else:
        prompts = per_prompt_means(seed_scores[0].get("per_sample", []), metric)
        stats = t_interval(list(prompts.values())) if len(prompts) >= 2 else {"se": None, "ci": None}
        stats["mean"] = per_seed[0]  # the task's own aggregate (may weight samples, not prompts)
        stats["n"] = len(prompts) if prompts else 1
        stats["ci_over"] = "prompts" if stats.get("ci") else None
    stats["per_seed"] = per_seed
    return stats


def paired_vs_reference(seed_scores: dict[int, dict[str, Any]], ref_scores: dict[int, dict[str, Any]],
                        metric: str) -> dict[str, Any] | None:
    """Per-prompt paired difference to the reference (same prompts, same seed), t-interval over prompts."""
    diffs: dict[str, list[float]] = defaultdict(list)
    for seed, scores in seed_scores.items():
        ref = ref_scores.get(seed)
        if ref is None:
            continue
        mine = per_prompt_means(scores.get("per_sample", []), metric)
        theirs = per_prompt_means(ref.get("per_sample", []), metric)
        for prompt_id in sorted(mine.keys() & theirs.keys()):  # fixed order: sums identical across processes
            diffs[prompt_id].append(mine[prompt_id] - theirs[prompt_id])
    if len(diffs) < 2:
        return None
    stats = t_interval([sum(v) / len(v) for v in diffs.values()])
    stats["ci_over"] = "prompts (paired)"
    return stats


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
    rows = []
    for (row_id, step), row_runs in grouped.items():
        row_runs.sort(key=lambda r: r["seed"])
        first = row_runs[0]
        seed_scores = [r["scores"] for r in row_runs]
        names: list[str] = []
        for s in seed_scores:
            for name in s["metrics"]:
                if name not in names:
                    names.append(name)
            for name, direction in s.get("directions", {}).items():
                metric_info.setdefault(name, {"higher_is_better": direction})
        metrics = {}
        for name in names:
            stats = _metric_stats(seed_scores, name)
            if stats is not None:
                metrics[name] = stats
        row: dict[str, Any] = {
            "id": point_id(row_id, step), "row_id": row_id, "step": step,
            "kind": "reference" if first["method"] == "reference" else "measured",
            "task": first["task"], "model": first["model"], "method": first["method"], "label": first["label"],
            "hparams": first["hparams"], "seeds": [r["seed"] for r in row_runs], "metrics": metrics,
            "runs": [r["run_key"] for r in row_runs],
        }
        ref = reference_by_task_model.get((first["task"], first["model"]))
        if ref is not None and first["method"] != "reference":
            vs = {}
            for name in names:
                if metric_info.get(name, {}).get("higher_is_better") is None and name != "kl":
                    continue
                stats = paired_vs_reference({r["seed"]: r["scores"] for r in row_runs}, ref, name)
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

NO_KL = ("no per-sample KL (greedy sampling or score.kl off): matched-KL metrics need KL(policy || reference) "
         "of each evaluated checkpoint")


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
                value = per_prompt_means(per_sample, metric)
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
            ref_values = {s: per_prompt_means(ref[s].get("per_sample", []), metric) for s in c.seeds if s in ref}
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
