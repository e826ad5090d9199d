"""``pobench methods``: every registered method with its paper, arXiv id and hyperparameters."""
from __future__ import annotations

import argparse

import methods
from bench.commands._listing import add_listing_parser, print_listing


def _rows() -> list[dict]:
    rows = []
    for name in methods.available():
        cls = methods.method_class(name)
        instance = cls()
        rows.append({
            "name": name,
            "paper": cls.paper,
            "arxiv": cls.arxiv,
            "hyperparameters": {k: v.default for k, v in cls.hyperparameters.items()},
            "choices": {k: list(v.choices) for k, v in cls.hyperparameters.items() if v.choices},
            "needs": sorted(instance.needs),
            "uses_reference": cls.uses_reference,
            "preparation": instance.preparation,
            "module": cls.__module__,
        })
    return rows


def _print_row(row: dict) -> None:
    hparams = ", ".join(f"{k}={v!r}" for k, v in row["hyperparameters"].items())
    print(f"{row['name']:<14} arXiv {row['arxiv'] or '-':<12} {row['paper']}")
    print(f"{'':<14} defaults: {hparams}")
    for key, options in row["choices"].items():
        print(f"{'':<14} {key} in {options}")
    extras = ", ".join(row["needs"]) or "token log-probs only"
    ref = "" if row["uses_reference"] else " (reference-free)"
    prep = f"   preparation step: {row['preparation']}" if row["preparation"] else ""
    print(f"{'':<14} inputs: {extras}{ref}{prep}   [{row['module']}]")


def run(args: argparse.Namespace) -> int:
    rows = _rows()
    print_listing(rows, args.json, _print_row, width=14, footer=lambda: f"\n{len(rows)} methods")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    add_listing_parser(subparsers, "methods", run, help="list PO methods with their papers and hyperparameters",
                       description="List every registered PO method (built-in and plugins).")
