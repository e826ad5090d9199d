"""``pobench rescore``: re-judge a suite's committed samples with another judge, into a new leaderboard."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.commands._suite_args import add_suite_arguments, config_error, suite_from_args
from bench.config import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rescore", help="re-judge a suite's stored samples with another judge (no generation, no training)",
        description="Read results/<suite>/runs/*.samples.jsonl.gz, score every completion again with the task's "
                    "metrics under JUDGE (a spec of `pobench judges`, e.g. sentiment:vader), keep each sample's "
                    "KL, and write a full leaderboard into --out (default results/<suite>-rescored-<judge>/).")
    add_suite_arguments(parser, results_default="the committed results/<suite name>: the records re-judged")
    parser.add_argument("--judge", required=True, help="judge spec, e.g. sentiment:vader or reward_model:<dir>")
    parser.add_argument("--out", help="output folder (default: results/<suite>-rescored-<judge>)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench import report
    from bench.runner import _safe, rescore_records

    try:
        suite = suite_from_args(args)
    except ConfigError as exc:
        return config_error(exc)
    out = Path(args.out or Path("results") / f"{suite.name}-rescored-{_safe(args.judge)}")
    try:
        source = Path(suite.results_dir) if suite.results_dir else Path("results") / suite.name  # committed records
        board, runs = rescore_records(source, args.judge, out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pobench rescore: {exc}", file=sys.stderr)
        return 2
    written = report.write_all(board, out)
    print(f"re-judged {sum(len(r['samples']) for r in runs)} samples of {len(runs)} runs with {args.judge}; "
          f"wrote {written['md']}", file=sys.stderr)
    print(report.markdown(board))
    return 0
