"""``pobench leaderboard``: rebuild a suite's leaderboard from its committed run records and samples
(``results/<suite>/runs/``, no work dir needed), or from the work dir's cache, or print/render one."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.commands._suite_args import add_suite_arguments, config_error, suite_from_args
from bench.config import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "leaderboard", help="rebuild a suite's leaderboard from its committed records (runs nothing), or print one",
        description="With a suite: recompute every number of results/<suite>/ (json, csv, md, html, plots) "
                    "from its run records and per-sample files alone (runs/*.json, runs/*.samples.jsonl.gz), "
                    "or with --from-work-dir from every finished run in the work dir's cache. With --from "
                    "FILE: print an existing leaderboard.json as markdown/csv, or re-render its files with --render.")
    add_suite_arguments(parser, results_default="the committed results/<suite name>; with --from-work-dir: "
                                                 "<work dir>/results/<suite name>")
    parser.add_argument("--from", dest="source", help="an existing leaderboard.json (or results/<suite>/)")
    parser.add_argument("--format", choices=["md", "csv", "json"], default="md")
    parser.add_argument("--render", metavar="DIR", help="with --from: write csv/md/html/plots into DIR")
    parser.add_argument("--readme", metavar="FILE", action="append", default=[],
                        help="rewrite the `<!-- pobench:results SUITE -->` blocks of FILE (e.g. README.md) from "
                             "the rebuilt leaderboard; results in docs are generated, never typed")
    parser.add_argument("--from-work-dir", action="store_true",
                        help="aggregate the finished runs of the work dir's cache (and rewrite the records)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench import report
    from bench.leaderboard import load_leaderboard

    if args.source:
        try:
            board = load_leaderboard(args.source)
        except (FileNotFoundError, ValueError) as exc:
            print(f"pobench leaderboard: {exc}", file=sys.stderr)
            return 2
        if args.render:
            written = report.write_all(board, Path(args.render))
            print("\n".join(str(p) for p in written.values()))
            return 0
    elif not args.from_work_dir:
        from bench.runner import rebuild_from_records

        try:
            suite = suite_from_args(args)
            # the committed results/<suite>/ unless --results-dir names another folder of records
            folder = Path(suite.results_dir) if suite.results_dir else Path("results") / suite.name
            board, runs = rebuild_from_records(folder)
        except ConfigError as exc:
            return config_error(exc)
        except (FileNotFoundError, ValueError) as exc:
            print(f"pobench leaderboard: {exc}", file=sys.stderr)
            return 2
        report.write_all(board, folder)
        print(f"rebuilt {folder} from {len(runs)} run records", file=sys.stderr)
        from bench import readme

        for doc in args.readme:
            changed = readme.update(Path(doc), {suite.name: board})
            print(f"{doc}: results of {suite.name} {'updated' if changed else 'unchanged'}", file=sys.stderr)
    else:
        try:
            suite = suite_from_args(args)
        except ConfigError as exc:
            return config_error(exc)
        from bench.plan import build_plan
        from bench.runner import make_leaderboard, write_run_records
        from bench.store import Store

        plan = build_plan(suite)
        board, runs = make_leaderboard(plan, Store(suite.resolved_work_dir()))
        if not runs:
            print(f"pobench leaderboard: no finished run of suite {suite.name} in {suite.resolved_work_dir()}; "
                  "run `pobench run` first", file=sys.stderr)
            return 1
        out = suite.resolved_results_dir()
        report.write_all(board, out)
        write_run_records(runs, out, board["manifest"])
        print(f"{len(runs)} of {len(plan.cells)} runs finished; wrote {out}", file=sys.stderr)
    if args.format == "md":
        print(report.markdown(board))
    elif args.format == "csv":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "lb.csv"
            report.write_csv(board, path)
            print(path.read_text(), end="")
    else:
        import json

        print(json.dumps(board, indent=2))
    return 0
