"""``pobench plan [SUITE] [KEY=VALUE ...]``: dry run: the grid, what is cached, the work left."""
from __future__ import annotations

import argparse
import json

from bench.commands._suite_args import add_suite_arguments, suite_command
from bench.config import SuiteConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan", help="dry run: the grid of runs, which stages are cached, the work left",
        description="Validate a suite and print its grid (task x model x method x hyperparameters x seed), "
                    "the status of every stage node in the work dir (done / partial / todo) and the work "
                    "left (optimizer steps, sequences to sample and to score, model evaluations of "
                    "`eval_tasks`). Runs nothing.")
    add_suite_arguments(parser, results_default="<work dir>/results/<suite name>, where a run would write")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=main)


@suite_command
def main(args: argparse.Namespace, suite: SuiteConfig) -> int:
    from bench.plan import build_plan, describe_plan, describe_source

    plan = build_plan(suite)
    report = describe_plan(plan)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"suite {suite.name} ({suite.source}), config hash {suite.hash()}")
    print(f"work dir {report['work_dir']}; results -> {suite.resolved_results_dir()}")
    print(f"{len(plan.cells)} runs = {len(suite.scored_tasks)} task(s) x {len(suite.models)} model(s) x "
          f"{report['configurations']} configuration(s) x {len(suite.seeds)} seed(s)")
    if suite.transfer_tasks:
        print(f"transfer: the policies trained on {suite.tasks[0]} are also scored on "
              f"{', '.join(suite.transfer_tasks)}")
    for task, source in report["data_sources"].items():
        print(f"data {task}: {describe_source(source)}")
    if suite.eval_tasks:
        limit = "all items" if suite.eval.limit is None else f"{suite.eval.limit} items per benchmark"
        print(f"model evaluation: {', '.join(suite.eval_tasks)} on every policy and the reference ({limit})")
    print()
    print(f"{'task':<8} {'model':<14} {'method':<28} {'seed':>4} {'step':>5}  stages (done/partial/todo)")
    for row in report["cells"]:
        step = "-" if row["step"] is None else row["step"]
        print(f"{row['task']:<8} {row['model']:<14} {row['label']:<28} {row['seed']:>4} {step:>5}  {row['stages']}")
    print()
    totals = report["nodes"]
    print("stage nodes: " + ", ".join(f"{stage} {c['done']}/{c['total']} done" for stage, c in totals.items()))
    left = report["work_left"]
    print("work left: " + (", ".join(f"{k} {'unknown' if v is None else v}" for k, v in left.items())
                           if left else "nothing (all cached)"))
    if any(v is None for v in left.values()):
        print("  (unknown: `prompts: null` on a task whose prompt count is known only once its data is loaded)")
    return 0
