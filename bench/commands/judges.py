"""``pobench judges``: every judge (built-in and ``pobench.judges`` plugins) with its spec syntax,
description and options. Nothing is loaded but the judge classes (no models)."""
from __future__ import annotations

import argparse
import json
import sys


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
    if args.json:
        print(json.dumps(listed, indent=2, default=repr))
        return 0
    for row in listed:
        if "error" in row:
            print(f"{row['name']:<13} UNAVAILABLE: {row['error']}")
            continue
        print(f"{row['name']:<13} {row['kind']:<10} spec: {row['spec']}"
              + (f"   (alias: {', '.join(row['aliases'])})" if row["aliases"] else ""))
        print(f"{'':<13} {row['description']}")
        options = ", ".join(f"{k}={v!r}" for k, v in row["options"].items())
        print(f"{'':<13} options: {options or 'none'}" + (f" (the spec sets {', '.join(row['spec_sets'])})"
                                                          if row["spec_sets"] else ""))
        print(f"{'':<13} [{row['class']}]")
    print(f"\n{len(listed)} judges; a task takes judge=<spec> or, in suite YAML, {{spec: <spec>, <option>: <value>}}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("judges", help="list judges with their spec syntax, description and options",
                                   description="List every judge (built-in and pobench.judges plugins): the spec "
                                               "string that builds it, what it measures and its options.")
    parser.add_argument("names", nargs="*", help="only these judges (default: all)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(func=run)
