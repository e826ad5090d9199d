"""``pobench tasks``: the task table with data sources, metrics and default sampling.

``pobench tasks`` lists every task (built-in and plugins) from class attributes only (no data is
read). ``--data-dir`` / ``--source`` also show which source each task would load from.
``--judge-accuracy`` measures the judge of tasks that can (IMDB: the sentiment scorer on labelled
IMDB reviews) so users see how far to trust the reward. ``pobench tasks reasoning --evaluate DIR``
runs a model-evaluation task (lm-eval GSM8K + ARC-Challenge) on a checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import tasks
from bench.commands._listing import add_listing_parser, print_listing
from tasks.base import TaskError


def _describe(name: str, args: argparse.Namespace) -> dict[str, Any]:
    try:
        cls = tasks.task_class(name)
    except TaskError as exc:
        return {"name": name, "error": str(exc)}
    row: dict[str, Any] = {
        "name": name, "version": cls.version, "description": cls.description, "paper": cls.paper,
        "module": cls.__module__, "preference_mode": cls.preference_mode, "evaluation": cls.evaluation,
        "sources": [{"kind": s.kind, "location": s.location, "description": s.description} for s in cls.sources],
        "metrics": [{"name": m.name, "direction": m.direction, "description": m.description} for m in cls.metrics],
        "sampling": cls.sampling.as_dict(),
        "default_judge": cls.default_judge(),
        "options": {k: v[0] for k, v in cls.options.items()},
    }
    if args.data_dir or args.source != "auto":
        try:
            row["resolved_source"] = cls(data_dir=args.data_dir, source=args.source).resolve_source()
        except TaskError as exc:
            row["resolved_source"] = f"unavailable: {exc}"
    return row


def _judge_accuracy(name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        task = tasks.get(name, data_dir=args.data_dir, source=args.source, judge=args.judge)
    except TaskError as exc:
        return {"error": str(exc)}
    if not hasattr(task, "judge_accuracy"):
        return None
    try:
        return task.judge_accuracy(limit=args.limit)
    except TaskError as exc:
        return {"error": str(exc)}


def _print_row(row: dict[str, Any]) -> None:
    print(f"{row['name']:<10} v{row['version']:<4} {row['description']}")
    print(f"{'':<10} paper: {row['paper'] or '-'}   [{row['module']}]")
    mode = row["evaluation"] if row["evaluation"] == "model" else f"samples, preferences: {row['preference_mode']}"
    print(f"{'':<10} evaluation: {mode}")
    for source in row["sources"]:
        print(f"{'':<10} source {source['kind']:<8} {source['location']}")
    if row["default_judge"]:
        print(f"{'':<10} judge: {row['default_judge']} (default; change with the task option judge=<spec>)")
    if "resolved_source" in row:
        print(f"{'':<10} -> would load from: {row['resolved_source']}")
    metrics = ", ".join(f"{m['name']} ({m['direction']})" for m in row["metrics"])
    print(f"{'':<10} metrics: {metrics}")
    s = row["sampling"]
    print(f"{'':<10} sampling: max_new_tokens={s['max_new_tokens']} temperature={s['temperature']} "
          f"top_p={s['top_p']} n={s['n']}" + (f" stop={s['stop']!r}" if s["stop"] else ""))
    if "judge_accuracy" in row:
        acc = row["judge_accuracy"]
        if "error" in acc:
            print(f"{'':<10} judge accuracy: unavailable ({acc['error']})")
        else:
            print(f"{'':<10} judge accuracy: {acc['accuracy']:.3f} [95% CI {acc['ci95_low']:.3f}, "
                  f"{acc['ci95_high']:.3f}] on {acc['n']} labelled reviews ({acc['reviews']}), "
                  f"judge {acc['judge']['name']}@{acc['judge']['version']}")


def _evaluate(args: argparse.Namespace) -> int:
    """``--evaluate CHECKPOINT``: run a model-evaluation task (reasoning) on a checkpoint."""
    from bench.store import atomic_write_json

    if len(args.names) != 1:
        print("pobench tasks: --evaluate takes exactly one task name, e.g. `pobench tasks reasoning "
              "--evaluate runs/.../model`", file=sys.stderr)
        return 2
    try:
        task = tasks.get(args.names[0], data_dir=args.data_dir, source=args.source)
        if task.evaluation != "model":
            raise TaskError(f"task {task.name!r} scores samples (evaluation={task.evaluation!r}); --evaluate is "
                            "for model-evaluation tasks such as reasoning")
        scores = task.evaluate_model(args.evaluate, limit=args.eval_limit)
    except TaskError as exc:
        print(f"pobench tasks: {exc}", file=sys.stderr)
        return 2
    result = {"model": args.evaluate, **task.record(), "metrics": scores.metrics, "details": scores.details}
    if args.output:
        atomic_write_json(args.output, {**result, "per_sample": scores.per_sample})
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        for name, value in scores.metrics.items():
            stderr = scores.details.get("stderr", {}).get(name)
            print(f"{name:<40} {value:.4f}" + (f" +- {stderr:.4f}" if stderr is not None else ""))
        used = task.source_used
        print(f"data: {used.kind}:{used.location}" if used else "data: -")
        if args.eval_limit:
            print(f"(limit={args.eval_limit} items per task: a smoke run, not comparable to full results)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.evaluate:
        return _evaluate(args)
    names = args.names or tasks.available()
    unknown = [n for n in names if n not in tasks.available()]
    if unknown:
        print(f"pobench tasks: unknown task(s) {unknown}; available: {', '.join(tasks.available())}",
              file=sys.stderr)
        return 2
    rows = [_describe(name, args) for name in names]
    if args.judge_accuracy:
        for row in rows:
            if "error" not in row:
                accuracy = _judge_accuracy(row["name"], args)
                if accuracy is not None:
                    row["judge_accuracy"] = accuracy
    print_listing(rows, args.json, _print_row, width=10, json_default=str, footer=lambda: f"\n{len(rows)} tasks")
    return 1 if any("error" in row for row in rows) and args.names else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_listing_parser(subparsers, "tasks", run, help="list tasks with their data sources, metrics and sampling",
                                description="List every registered task (built-in and plugins).",
                                names_help="only these tasks (default: all)")
    parser.add_argument("--data-dir", help="folder with local data in the original formats (e.g. ../shared/data); "
                        "shows which source each task would use")
    parser.add_argument("--source", default="auto", choices=["auto", "hub", "local", "builtin"],
                        help="force a data source kind (default: auto)")
    parser.add_argument("--judge-accuracy", action="store_true",
                        help="measure each task's judge where it can (IMDB: sentiment accuracy on labelled reviews)")
    parser.add_argument("--judge", help="judge spec for --judge-accuracy (default: the task's), e.g. sentiment:vader")
    parser.add_argument("--limit", type=int, default=1000, help="labelled examples for --judge-accuracy")
    parser.add_argument("--evaluate", metavar="CHECKPOINT",
                        help="run a model-evaluation task (reasoning: lm-eval GSM8K/ARC) on this model dir or hub id")
    parser.add_argument("--eval-limit", type=int, help="items per lm-eval task for --evaluate (smoke runs)")
    parser.add_argument("--output", help="with --evaluate: write metrics, details and per-item records here (JSON)")
