"""``pobench recipes``: the published recipes of the paper suites (configs/paper/*.yaml), as markdown tables."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recipes", help="the paper suites' published recipes: paper vs official code vs pobench, per setting",
        description="Print, per paper suite (configs/paper/*.yaml), every setting of its `recipe:` section: the "
                    "paper's value, the official code's, pobench's (read from the suite's own fields) and why they "
                    "differ. --write rewrites the <!-- pobench:recipes --> block of a document "
                    "(docs/paper_recipes.md); --check exits 1 when that block is stale.")
    parser.add_argument("configs", nargs="*", type=Path, help="suite files (default: configs/paper/*.yaml)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--write", type=Path, metavar="DOC", help="rewrite the recipes block of DOC")
    target.add_argument("--check", type=Path, metavar="DOC", help="exit 1 when DOC's recipes block is stale")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench import recipes

    body = recipes.render(args.configs or None)
    if args.write:
        changed = recipes.update(args.write, body)
        print(f"{args.write}: {'updated' if changed else 'already up to date'}", file=sys.stderr)
        return 0
    if args.check:
        match = recipes.BLOCK.search(args.check.read_text())
        if match is None or match.group("body") != body:
            print(f"{args.check}: the recipes block is stale; regenerate it with "
                  f"`pobench recipes --write {args.check}`", file=sys.stderr)
            return 1
        print(f"{args.check}: up to date", file=sys.stderr)
        return 0
    print(body, end="")
    return 0
