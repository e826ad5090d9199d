"""CLI subcommands: one module per command, each exposing ``register(subparsers)``.

Adding a command never touches ``bench/cli.py``: drop a module here that defines
``register(subparsers) -> None`` (it adds its parser and sets ``func`` via
``set_defaults(func=...)``; ``func(args) -> int`` is the exit code).
"""
