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
"""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

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


def build_leaderboard(suite_name: str, runs: list[dict[str, Any]], *, manifest: dict[str, Any],
                      config_hash: str, primary: dict[str, str] | None = None,
                      metric_info: dict[str, dict[str, Any]] | None = None,
                      paper_rows: list[dict[str, Any]] | None = None, kl_budget: float | None = None
                      ) -> dict[str, Any]:
    """``runs``: one dict per (row, seed) with keys row_id, task, model, method, label, hparams, seed,
    scores (the score stage's scores.json), run_key. The reference rows have method ``reference``."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        grouped[run["row_id"]].append(run)
    reference_by_task_model: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for row_runs in grouped.values():
        if row_runs[0]["method"] == "reference":
            reference_by_task_model[(row_runs[0]["task"], row_runs[0]["model"])] = {
                r["seed"]: r["scores"] for r in row_runs}
    metric_info = dict(metric_info or {})
    rows = []
    for row_id, row_runs in grouped.items():
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
            "id": row_id, "kind": "reference" if first["method"] == "reference" else "measured",
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
        rows.append({"id": f"{paper['task']}/paper/{paper['method']}", "kind": "paper", "task": paper["task"],
                     "model": paper.get("model", "(paper)"), "method": paper["method"], "label": paper["method"],
                     "hparams": {}, "seeds": [], "source": paper["source"], "note": paper.get("note", ""),
                     "metrics": {paper["metric"]: {"mean": paper["value"], "se": None, "ci": None, "n": None,
                                                   "ci_over": None}}})
    _merge_paper_rows(rows)
    return {
        "schema": SCHEMA, "suite": suite_name, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_hash": config_hash, "primary_metric": primary or {}, "metrics": metric_info,
        "kl_budget": kl_budget, "rows": rows, "manifest": manifest,
    }


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
