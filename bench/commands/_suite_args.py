"""Shared argument handling of the commands that take a suite (run, plan, leaderboard, ...):
:func:`add_suite_arguments` on the parser, and :func:`suite_command` (or :func:`suite_from_args`
with :func:`config_error`) to load the suite, a ConfigError printed as ``pobench: config error: ...``
with exit code 2."""
from __future__ import annotations

import argparse
import functools
from typing import Callable

from bench.config import ConfigError, SuiteConfig, load_suite

DEFAULT_SUITE = "default"


def add_suite_arguments(parser: argparse.ArgumentParser, optional: bool = True,
                        results_default: str = "results/<suite name>") -> None:
    """``results_default``: where this command's leaderboard files go (or are read from) without --results-dir."""
    parser.add_argument("suite", nargs="?" if optional else None, default=DEFAULT_SUITE,
                        help="suite YAML path or name under configs/ (default: %(default)s, the offline CPU suite)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. train.steps=5 seeds=[0,1] methods=dpo,ipo "
                             "generation.backend=hf")
    parser.add_argument("--work-dir", help="cache of stage outputs (default: $POBENCH_WORK_DIR or ./runs)")
    parser.add_argument("--results-dir", help=f"leaderboard files and run records (default: {results_default})")
    parser.add_argument("--executor", choices=["local", "ray"], help="override executor.kind")


def suite_from_args(args: argparse.Namespace) -> SuiteConfig:
    """Load and validate; a ConfigError propagates with a message naming file and field."""
    suite_arg = args.suite
    overrides = list(args.overrides or [])
    # `pobench run train.steps=3` (no suite, only overrides): the first "positional" is an override
    if suite_arg and "=" in suite_arg:
        overrides.insert(0, suite_arg)
        suite_arg = DEFAULT_SUITE
    if args.work_dir:
        overrides.append(f"work_dir={args.work_dir}")
    if args.results_dir:
        overrides.append(f"results_dir={args.results_dir}")
    if getattr(args, "executor", None):
        overrides.append(f"executor.kind={args.executor}")
    return load_suite(suite_arg, overrides)


def config_error(exc: ConfigError) -> int:
    import sys

    print(f"pobench: config error: {exc}", file=sys.stderr)
    return 2


def suite_command(main: Callable[[argparse.Namespace, SuiteConfig], int]) -> Callable[[argparse.Namespace], int]:
    """``main(args, suite)`` as a command's ``func(args)``: the suite is loaded from the suite
    arguments first; a ConfigError is printed (:func:`config_error`) and ``main`` does not run."""
    @functools.wraps(main)
    def func(args: argparse.Namespace) -> int:
        try:
            suite = suite_from_args(args)
        except ConfigError as exc:
            return config_error(exc)
        return main(args, suite)
    return func
