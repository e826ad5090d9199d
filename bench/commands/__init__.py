"""CLI subcommands: one module per command, each exposing ``register(subparsers)``.

Adding a command never touches ``bench/cli.py``: drop a module here that defines
``register(subparsers) -> None`` (it adds its parser and sets ``func`` via
``set_defaults(func=...)``; ``func(args) -> int`` is the exit code). Modules whose name starts
with ``_`` are not commands but what several share: ``_suite_args`` (the suite arguments and
loading a suite, :func:`~bench.commands._suite_args.suite_command`) and ``_listing`` (the
``--json`` listings of backends, judges, methods and tasks).
"""
