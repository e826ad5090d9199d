"""Run a suite end to end: plan -> execute the stage DAG -> leaderboard files and run records."""
from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench.config import SuiteConfig
from bench.executors import execute
from bench.leaderboard import build_leaderboard
from bench.manifest import build_manifest
from bench.plan import Node, Plan, build_plan
from bench.report import write_all
from bench.store import Store, atomic_write_json

log = logging.getLogger("pobench")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text)


def primary_metrics(suite: SuiteConfig) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Each task's primary metric (its first metric with a direction) and every metric's info."""
    import tasks

    primary: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in suite.tasks:
        cls = tasks.task_class(name)
        for metric in cls.metrics:
            info.setdefault(metric.name, {"higher_is_better": metric.higher_is_better,
                                          "description": metric.description})
            if name not in primary and metric.higher_is_better is True:
                primary[name] = metric.name
    for name in suite.eval_tasks:  # extra columns of every row, never a task's primary metric
        for metric in tasks.task_class(name).metrics:
            info.setdefault(metric.name, {"higher_is_better": metric.higher_is_better,
                                          "description": metric.description, "eval_task": name})
    info.setdefault("kl", {"higher_is_better": False,
                           "description": "KL(policy || reference) per sequence, nats (teacher forcing)"})
    return primary, info


def _chain(node: Node) -> list[Node]:
    """A node and everything upstream of it, upstream first."""
    seen: dict[tuple[str, str], Node] = {}

    def visit(n: Node) -> None:
        for dep in n.deps.values():
            visit(dep)
        seen.setdefault((n.stage, n.key), n)

    visit(node)
    return list(seen.values())


def add_evaluation(scores: dict[str, Any], results: dict[str, Any], eval_task: str) -> None:
    """Fold an ``evaluate`` stage's results into a run's scores: extra metrics (names are checked
    disjoint from the training task's at config time), their directions and standard errors."""
    clash = sorted(set(scores["metrics"]) & set(results["metrics"]))
    if clash:  # only metrics a task could not declare (e.g. an lm-eval group's) get here
        raise RuntimeError(f"eval task {eval_task!r} reports metric(s) {clash} that this row already has "
                           "(from its training task or another eval task); they would share one leaderboard column")
    scores["metrics"].update(results["metrics"])
    scores.setdefault("directions", {}).update(results.get("directions", {}))
    scores.setdefault("stderr", {}).update(results.get("stderr", {}))


def collect_runs(plan: Plan, store: Store) -> list[dict[str, Any]]:
    import json

    runs = []
    for cell in plan.cells:
        out = store.get("score", cell.score.key)
        if out is None:
            continue
        scores = json.loads((out.path / "scores.json").read_text())
        stages = {}
        sources = {}
        evaluations = {}
        for node in _chain(cell.score):
            done = store.get(node.stage, node.key)
            record = done.record if done else {}
            stages[f"{node.stage}:{node.label}"] = {"key": node.key, "seconds": record.get("seconds")}
            source = (record.get("task_record") or {}).get("data_source")
            if source and node.stage in ("sft", "prefdata", "generate"):
                sources[node.stage] = source
        for name, node in cell.evals.items():
            done = store.get(node.stage, node.key)
            stages[f"{node.stage}:{node.label}"] = {"key": node.key,
                                                    "seconds": done.record.get("seconds") if done else None}
            if done is None:  # not evaluated yet: its columns stay empty (check reports them missing)
                continue
            results = json.loads((done.path / "results.json").read_text())
            add_evaluation(scores, results, name)
            source = (results.get("task_record") or {}).get("data_source")
            if source:
                sources[f"evaluate:{name}"] = source
            evaluations[name] = {"key": node.key, "metrics": results["metrics"], "stderr": results.get("stderr", {}),
                                 "task_record": results.get("task_record"), "given_as": results.get("given_as"),
                                 "details": {k: v for k, v in (results.get("details") or {}).items()
                                             if k != "stderr"}}
        runs.append({"row_id": cell.row_id, "task": cell.task, "model": cell.model, "method": cell.method,
                     "label": cell.label, "hparams": cell.hparams, "seed": cell.seed, "scores": scores,
                     "run_key": cell.score.key, "stages": stages, "data_sources": sources,
                     "evaluations": evaluations})
    return runs


def make_leaderboard(plan: Plan, store: Store) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    suite = plan.suite
    runs = collect_runs(plan, store)
    primary, info = primary_metrics(suite)
    data_sources: dict[str, Any] = {}
    for run in runs:
        record = run["scores"].get("task_record", {})
        if record.get("data_source"):
            data_sources[run["task"]] = record["data_source"]  # what the evaluation prompts came from
        for stage, source in run.get("data_sources", {}).items():
            if stage != "generate":
                data_sources[f"{run['task']}:{stage}"] = source  # preference / SFT data
    manifest = build_manifest(suite.hash(), suite.seeds, data_sources,
                              extra={"suite_source": suite.source, "suite": suite.to_dict()})
    paper = [{"task": p.task or suite.tasks[0], "method": p.method, "metric": p.metric, "value": p.value,
              "source": p.source, "note": p.note} for p in suite.paper_reference]
    board = build_leaderboard(suite.name, runs, manifest=manifest, config_hash=suite.hash(), primary=primary,
                              metric_info=info, paper_rows=paper, kl_budget=suite.score.kl_budget)
    return board, runs


def write_run_records(runs: list[dict[str, Any]], out_dir: Path, manifest: dict[str, Any]) -> None:
    """One record per leaderboard run under ``<out_dir>/runs/``; records of runs that are no longer
    in the suite (a method removed from the config) are deleted so the folder matches the board."""
    short_manifest = {k: v for k, v in manifest.items() if k != "suite"}
    written = set()
    for run in runs:
        record = {k: v for k, v in run.items() if k != "scores"}
        record["metrics"] = run["scores"]["metrics"]
        record["task_record"] = run["scores"].get("task_record")
        record["manifest"] = short_manifest
        name = _safe(f"{run['task']}__{run['model']}__{run['label']}__s{run['seed']}") + ".json"
        atomic_write_json(out_dir / "runs" / name, record)
        written.add(name)
    for stale in (out_dir / "runs").glob("*.json"):
        if stale.name not in written:
            stale.unlink()


def run_suite(suite: SuiteConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.time()
    plan = build_plan(suite)
    store = Store(suite.resolved_work_dir())
    say(f"[pobench] suite {suite.name}: {len(plan.cells)} runs, {len(plan.nodes)} stage nodes, "
        f"work dir {store.root}, executor {suite.executor.kind}")

    def on_node(node: Node, status: str, seconds: float) -> None:
        say(f"[pobench] {status:>6} {node.stage:<9} {node.label:<40} {seconds:7.1f}s")

    summary = execute(plan, store, on_node)
    board, runs = make_leaderboard(plan, store)
    results_dir = suite.resolved_results_dir()
    written = write_all(board, results_dir)
    write_run_records(runs, results_dir, board["manifest"])
    wall = time.time() - started
    say(f"[pobench] done in {wall:.1f}s ({summary['computed']} stages computed, {summary['cached']} cached); "
        f"leaderboard: {written['md']}")
    return {"plan": plan, "board": board, "written": written, "wall_s": wall, **summary}
