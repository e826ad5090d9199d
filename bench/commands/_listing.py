"""What the listing commands (``pobench backends``, ``judges``, ``methods``, ``tasks``) share: one
parser shape (optional names, ``--json``) and one way to print registry rows, as JSON or as text
with an entry that cannot be loaded (a row with an ``error``) on one UNAVAILABLE line."""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable


def add_listing_parser(subparsers: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int],
                       *, help: str, description: str, names_help: str | None = None) -> argparse.ArgumentParser:
    """The parser of a listing command: ``names`` (when ``names_help`` is given), ``--json``, ``func``."""
    parser = subparsers.add_parser(name, help=help, description=description)
    if names_help is not None:
        parser.add_argument("names", nargs="*", help=names_help)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(func=func)
    return parser


def print_listing(rows: list[dict[str, Any]], as_json: bool, print_row: Callable[[dict[str, Any]], None], *,
                  width: int, footer: Callable[[], str] | None = None,
                  json_default: Callable[[Any], Any] | None = None) -> None:
    """``rows`` as indented JSON, or each through ``print_row`` (a row with an ``error`` as
    ``<name> UNAVAILABLE: <error>``, the name padded to ``width``) and then ``footer()``."""
    if as_json:
        print(json.dumps(rows, indent=2, default=json_default))
        return
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<{width}} UNAVAILABLE: {row['error']}")
        else:
            print_row(row)
    if footer is not None:
        print(footer())
