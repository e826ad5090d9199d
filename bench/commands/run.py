"""``pobench run [SUITE] [KEY=VALUE ...]``: run a suite end to end (default: the offline CPU suite)."""
from __future__ import annotations

import argparse

from bench.commands._suite_args import add_suite_arguments, suite_command
from bench.config import SuiteConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a suite: sft -> prefdata -> prep -> train -> generate -> score -> report",
        description="Run a suite end to end. Finished stages are cached in the work dir (keyed by the hash "
                    "of their inputs): a re-run skips them and an interrupted run resumes. Model-evaluation "
                    "tasks of the suite (`eval_tasks: [reasoning]`, e.g. lm-eval GSM8K/ARC; `eval.limit` "
                    "items per benchmark) run on every trained policy and the reference, and their metrics "
                    "become extra leaderboard columns. Leaderboard files go to results/<suite>/.")
    add_suite_arguments(parser)
    parser.set_defaults(func=main)


@suite_command
def main(args: argparse.Namespace, suite: SuiteConfig) -> int:
    from bench.runner import run_suite
    from bench.stages import ensure_threads

    ensure_threads()
    result = run_suite(suite)
    print(open(result["written"]["md"]).read())
    return 0
