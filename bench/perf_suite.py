"""``pobench bench suite SUITE``: where a suite's time and memory go, per stage kind.

Every stage record carries the seconds the stage took and its peak resident memory
(``peak_rss_mb``, sampled while it ran: :mod:`bench.resources`); this module reads the records of a
suite's plan from the work dir (running the suite first unless told not to) and reports, per stage
kind, the count, the total and mean seconds, the share of all stage time and the largest peak, plus
the cost of one evaluated point (generate + score, + pairs where the task scores held-out pairs). The
seconds are those of the run that computed each stage: on a shared machine they carry its load at
that time, which the report cannot remove.
"""
from __future__ import annotations

import time
from collections import defaultdict
from statistics import median
from typing import Any

from bench.config import SuiteConfig

#: issue target: every stage of a suite under 4 GB of resident memory
PEAK_TARGET_MB = 4096


def stage_rows(suite: SuiteConfig) -> list[dict[str, Any]]:
    """One row per node of the suite's plan: stage, label, seconds, peak memory (None when not finished)."""
    from bench.plan import build_plan
    from bench.store import Store

    plan = build_plan(suite)
    store = Store(suite.resolved_work_dir())
    rows = []
    for node in plan.nodes:
        done = store.get(node.stage, node.key)
        record = done.record if done is not None else {}
        rows.append({"stage": node.stage, "label": node.label, "key": node.key, "done": done is not None,
                     "seconds": record.get("seconds"), "peak_rss_mb": record.get("peak_rss_mb"),
                     "rss_before_mb": record.get("rss_before_mb"), "finished_at": record.get("finished_at")})
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    timed = [r for r in rows if r["seconds"] is not None]
    total = sum(r["seconds"] for r in timed)
    by_stage: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in timed:
        groups[r["stage"]].append(r)
    for name, items in groups.items():
        seconds = [r["seconds"] for r in items]
        peaks = [r["peak_rss_mb"] for r in items if r["peak_rss_mb"] is not None]
        by_stage[name] = {"count": len(items), "seconds": round(sum(seconds), 1),
                          "share": round(sum(seconds) / total, 4) if total else None,
                          "mean_s": round(sum(seconds) / len(seconds), 2), "median_s": round(median(seconds), 2),
                          "peak_rss_mb": max(peaks) if peaks else None}
    gen, score, pairs = by_stage.get("generate"), by_stage.get("score"), by_stage.get("pairs")
    point = None
    if gen and score:
        point = {"generate_s": gen["median_s"], "score_s": score["median_s"],
                 "score_over_generate": round(score["median_s"] / gen["median_s"], 2) if gen["median_s"] else None,
                 **({"pairs_s": pairs["median_s"]} if pairs else {}),
                 "total_s": round(gen["median_s"] + score["median_s"] + (pairs["median_s"] if pairs else 0.0), 2),
                 "note": "median seconds of the generate and of the score stages (one evaluated point each)"
                         + (", plus the pairs stage (held-out pairs under the policy)" if pairs else "")}
    peaks = [r["peak_rss_mb"] for r in timed if r["peak_rss_mb"] is not None]
    from bench.runner import stage_span

    return {"stages": len(rows), "finished": sum(r["done"] for r in rows), "timed": len(timed),
            "stage_seconds": round(total, 1), "span_seconds": stage_span(timed), "by_stage": dict(sorted(by_stage.items(), key=lambda kv: -kv[1]["seconds"])),
            "evaluated_point": point,
            "peak_rss_mb": max(peaks) if peaks else None,
            "memory_target": {"target_mb": PEAK_TARGET_MB, "stages_measured": len(peaks),
                              "met": (max(peaks) <= PEAK_TARGET_MB) if peaks else None,
                              "over": [f"{r['stage']} {r['label']}" for r in timed
                                       if (r["peak_rss_mb"] or 0) > PEAK_TARGET_MB]}}


def profile_suite(suite: SuiteConfig, run: bool = True, mode: str | None = None) -> dict[str, Any]:
    from bench.manifest import hardware

    wall = None
    if run:
        from bench.runner import run_suite

        started = time.time()
        run_suite(suite, mode=mode)
        wall = round(time.time() - started, 1)
    rows = stage_rows(suite)
    return {"schema": "pobench.suite_profile/1", "suite": suite.name, "config_hash": suite.hash(),
            "machine": hardware(), "wall_s_this_invocation": wall, **summarize(rows), "nodes": rows}


def format_profile(report: dict[str, Any]) -> str:
    lines = [f"suite {report['suite']}: {report['finished']}/{report['stages']} stages finished, "
             f"{report['stage_seconds']:.0f} s of stage time"
             + (f", {report['span_seconds']:.0f} s from the first stage's start to the last one's end"
                if report.get("span_seconds") is not None else "")
             + (f", this invocation {report['wall_s_this_invocation']:.0f} s" if report.get("wall_s_this_invocation")
                is not None else ""),
             f"{'stage':<10} {'count':>5} {'seconds':>9} {'share':>7} {'mean s':>8} {'peak MiB':>9}"]
    for name, s in report["by_stage"].items():
        peak = "-" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb']:.0f}"
        lines.append(f"{name:<10} {s['count']:>5} {s['seconds']:>9.1f} {100 * (s['share'] or 0):>6.1f}% "
                     f"{s['mean_s']:>8.1f} {peak:>9}")
    point = report.get("evaluated_point")
    if point:
        lines.append(f"one evaluated point: generate {point['generate_s']:.1f} s + score {point['score_s']:.1f} s"
                     + (f" + pairs {point['pairs_s']:.1f} s" if "pairs_s" in point else "")
                     + (f" (score / generate {point['score_over_generate']:.2f})"
                        if point.get("score_over_generate") is not None else ""))
    target = report["memory_target"]
    if target["met"] is not None:
        lines.append(f"peak resident memory {report['peak_rss_mb']:.0f} MiB over {target['stages_measured']} "
                     f"measured stages: {'within' if target['met'] else 'OVER'} {target['target_mb']} MiB"
                     + (f" ({', '.join(target['over'])})" if target["over"] else ""))
    else:
        lines.append("peak memory: not recorded (stages computed before records carried peak_rss_mb)")
    return "\n".join(lines)
