"""``pobench judges``: every judge (built-in and ``pobench.judges`` plugins) with its spec syntax,
description and options. Nothing is loaded but the judge classes (no models)."""
from __future__ import annotations

import argparse
import sys

from bench.commands._listing import add_listing_parser, print_listing


def rows(names: list[str] | None = None) -> list[dict]:
    from tasks import judges

    return [judges.describe(name) for name in (names or judges.available())]


def run(args: argparse.Namespace) -> int:
    from tasks import judges

    unknown = [name for name in args.names if judges.ALIASES.get(name, name) not in judges.REGISTRY]
    if unknown:
        print(f"pobench judges: unknown judge(s) {unknown}; available: {judges.available()}",
              file=sys.stderr)
        return 2
    listed = rows([judges.ALIASES.get(name, name) for name in args.names])
    print_listing(listed, args.json, _print_row, width=13, json_default=repr,
                  footer=lambda: f"\n{len(listed)} judges; a task takes judge=<spec> or, in suite YAML, "
                                 "{spec: <spec>, <option>: <value>}")
    return 0


def _print_row(row: dict) -> None:
    print(f"{row['name']:<13} {row['kind']:<10} spec: {row['spec']}"
          + (f"   (alias: {', '.join(row['aliases'])})" if row["aliases"] else ""))
    print(f"{'':<13} {row['description']}")
    options = ", ".join(f"{k}={v!r}" for k, v in row["options"].items())
    print(f"{'':<13} options: {options or 'none'}" + (f" (the spec sets {', '.join(row['spec_sets'])})"
                                                      if row["spec_sets"] else ""))
    print(f"{'':<13} [{row['class']}]")


def register(subparsers: argparse._SubParsersAction) -> None:
    add_listing_parser(subparsers, "judges", run, help="list judges with their spec syntax, description and options",
                       description="List every judge (built-in and pobench.judges plugins): the spec string that "
                                   "builds it, what it measures and its options.",
                       names_help="only these judges (default: all)")
