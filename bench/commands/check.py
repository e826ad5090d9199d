"""``pobench check --baseline B [--current C]``: fail (exit 1) when a metric regressed beyond tolerance."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="compare a leaderboard with a baseline; exit 1 on a statistically significant regression",
        description="For every measured row and metric with a direction, fail when the current mean is worse "
                    "than the baseline by more than z * sqrt(se_baseline^2 + se_current^2) + abs_tol + "
                    "rel_tol * |baseline| (standard errors over seeds, or over prompts for one-seed rows). "
                    "Prints a table of what moved. Exit codes: 0 ok, 1 regression or missing row, 2 bad input.")
    parser.add_argument("--baseline", required=True, help="baseline leaderboard.json (or its directory)")
    parser.add_argument("--current", help="current leaderboard.json (default: results/<baseline suite>/"
                                          "leaderboard.json)")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="two-sided confidence of the noise band (default: %(default)s)")
    parser.add_argument("--abs-tol", type=float, default=0.0, help="extra absolute slack (default: 0)")
    parser.add_argument("--rel-tol", type=float, default=0.0, help="extra slack relative to |baseline| (default: 0)")
    parser.add_argument("--metrics", help="comma-separated metrics to check (default: every metric with a "
                                          "direction except kl)")
    parser.add_argument("--allow-missing", action="store_true", help="rows/metrics absent from current are "
                                                                     "reported, not failures")
    parser.add_argument("--all", action="store_true", help="print every comparison, not only what moved")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.check import compare, format_table
    from bench.leaderboard import load_leaderboard

    try:
        baseline = load_leaderboard(args.baseline)
        current_path = args.current or Path("results") / baseline["suite"] / "leaderboard.json"
        current = load_leaderboard(current_path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pobench check: {exc}", file=sys.stderr)
        return 2
    if not 0 < args.confidence < 1:
        print("pobench check: --confidence must be in (0, 1)", file=sys.stderr)
        return 2
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    comparisons = compare(baseline, current, confidence=args.confidence, abs_tol=args.abs_tol,
                          rel_tol=args.rel_tol, metrics=metrics, allow_missing=args.allow_missing)
    failed = [c for c in comparisons if c.failed]
    moved = [c for c in comparisons if c.status not in ("ok", "info")]
    print(f"baseline {args.baseline} (config {baseline.get('config_hash')}) vs current {current_path} "
          f"(config {current.get('config_hash')})")
    if baseline.get("config_hash") != current.get("config_hash"):
        print("note: the suites' config hashes differ: the comparison may not be like for like")
    if args.all or moved:
        print(format_table(comparisons, only_moved=not args.all))
    checked = sum(c.status not in ("info", "no-se") for c in comparisons)
    untested = sum(c.status == "no-se" for c in comparisons)
    if untested:
        print(f"note: {untested} changed metric(s) have no standard error on either side (single-seed "
              "corpus-level values): not tested; add seeds, or give --abs-tol/--rel-tol")
    if failed:
        print(f"FAIL: {len(failed)} of {checked} checked metric(s) regressed or are missing")
        return 1
    print(f"OK: {checked} checked metric(s), none regressed beyond tolerance "
          f"({sum(c.status == 'improved' for c in comparisons)} improved)")
    return 0
