"""``pobench backends``: every generation backend (built-in and ``pobench.backends`` plugins) with
its description and its options (``generation.backend_options``: name, default, meaning)."""
from __future__ import annotations

import argparse

from bench.commands._listing import add_listing_parser, print_listing


def _row(name: str) -> dict:
    from bench.backends import BackendError, backend_class, vllm_available

    try:
        cls = backend_class(name)
    except BackendError as exc:
        return {"name": name, "error": str(exc)}
    model = getattr(cls, "options_model", None)
    options = {} if model is None else {
        key: {"default": None if info.is_required() else info.get_default(), "required": info.is_required(),
              "description": info.description or ""} for key, info in model.model_fields.items()}
    row = {"name": name, "description": getattr(cls, "description", "") or (cls.__doc__ or "").strip(),
           "class": f"{cls.__module__}:{cls.__qualname__}", "options": options}
    if name == "vllm":
        row["importable"] = vllm_available()
    return row


def _print_row(row: dict) -> None:
    note = "" if row.get("importable", True) else "  (not importable here)"
    print(f"{row['name']:<8} {row['description']}{note}   [{row['class']}]")
    for key, info in row["options"].items():
        default = "required" if info["required"] else f"default {info['default']!r}"
        print(f"{'':<8}   {key} ({default}): {info['description']}")


def run(args: argparse.Namespace) -> int:
    from bench.backends import available_backends, resolve_backend_name

    rows = [_row(name) for name in available_backends()]
    print_listing(rows, args.json, _print_row, width=8, json_default=repr,
                  footer=lambda: f"\nauto = {resolve_backend_name('auto')} here (vllm when importable, on a CPU only for stages "
                                 "of >= 32k sampled tokens; else hf); "
                                 "options go in generation.backend_options")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    add_listing_parser(subparsers, "backends", run, help="list generation backends and their options",
                       description="List every generation backend (built-in and pobench.backends plugins) with "
                                   "the options generation.backend_options takes.")
