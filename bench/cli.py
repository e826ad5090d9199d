"""The ``pobench`` command line: subcommands are discovered from ``bench.commands``.

Errors are for people: a failure pobench anticipates (one of :data:`USER_ERRORS`: a bad suite or
override, task data that is missing offline or malformed, a model that cannot be loaded, a full
disk, ...) ends with one line on stderr, ``pobench: error: <message>`` (``pobench: error in <stage>
<label>: ...`` when a stage raised it), and exit code 2. The message names the file/line/field and
what to do. ``--debug`` (or ``POBENCH_DEBUG=1``) shows the traceback instead. Anything else is a bug
and keeps its traceback. Ctrl-C ends with one line and exit code 130; finished stages are kept.

Before a command that may reach the Hugging Face hub runs, :func:`tasks.errors.go_offline_if_unreachable`
checks in about a second that the hub answers when no offline switch is set; when it does not, the
command works offline (``HF_HUB_OFFLINE=1``) and says so, instead of the hub client's retries with
backoff (~50 s per file) ending in a connection error.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings
from pathlib import Path

import bench.commands
from bench import interrupts

#: the project's error types a person can act on, as (module, class): looked up in ``sys.modules`` (a
#: module that was never imported raised nothing), so reporting an error never imports torch
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("bench.config.loader", "ConfigError"),
    ("tasks.errors", "TaskError"),  # DataError, SampleFileError: file and line
    ("bench.models", "ModelSourceError"),
    ("bench.registry", "RegistryError"),
    ("bench.backends", "BackendError"),
    ("methods.base", "MethodError"),
    ("bench.stages.prep", "PreparationError"),
    ("bench.prompts", "PromptFormatError"),
    ("bench.train.config", "TrainConfigError"),
    ("bench.train.data", "BadDataError"),
    ("bench.train.engine", "NonFiniteLossError"),
    ("tasks.sandbox", "SandboxError"),
    ("bench.store", "StoreError"),  # a full disk (DiskFullError): the work dir or file
)
#: commands that never load a model or data (no hub check before them)
# finished stages are complete entries of the store; the interrupted one left nothing it would reuse
INTERRUPTED = "pobench: interrupted; finished stages are kept: run the same command again to resume"
OFFLINE_COMMANDS = {"methods", "judges", "backends", "leaderboard", "check"}
REPO = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pobench",
        description="Benchmark preference-optimization methods: train, generate, score, compare.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also POBENCH_DEBUG=1); by default a failure "
                             "pobench anticipates is one line saying what to do")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(bench.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.commands.{info.name}")
        module.register(subparsers)
    for sub in subparsers.choices.values():  # `pobench run --debug ...` as well as `pobench --debug run ...`
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure pobench anticipates (see :data:`USER_ERRORS`; a full disk anywhere)."""
    for module_name, class_name in USER_ERRORS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    store = sys.modules.get("bench.store")
    return bool(store is not None and store.disk_full(exc))


def error_line(exc: BaseException) -> str:
    """The one line a person reads: where (the stage, when a stage raised it) and the message."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    store = sys.modules.get("bench.store")
    if store is not None and store.disk_full(exc) and not isinstance(exc, store.StoreError):
        message = f"disk full: {message}; free space there and run again"
    where = getattr(exc, "pobench_stage", None)
    return f"pobench: error{f' in {where}' if where else ''}: {message}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """pobench's own warnings (skipped records, damaged work-dir entries) as one line for people;
    other libraries' warnings as Python prints them."""
    stream = file or sys.stderr
    try:
        ours = Path(filename).resolve().is_relative_to(REPO) and ".tox" not in Path(filename).parts
    except (OSError, ValueError):
        ours = False
    try:
        stream.write(f"pobench: warning: {message}\n" if ours else
                     warnings.formatwarning(message, category, filename, lineno, line))
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("POBENCH_DEBUG", "") not in ("", "0")
    show_warning = warnings.showwarning
    warnings.showwarning = _show_warning
    handler = interrupts.install()
    try:
        if args.command not in OFFLINE_COMMANDS:
            from tasks.errors import go_offline_if_unreachable

            note = go_offline_if_unreachable()
            if note:
                print(f"pobench: {note}", file=sys.stderr, flush=True)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        if interrupts.requested(exc) and not debug:  # Ctrl-C that a library wrapped in its own error
            print(INTERRUPTED, file=sys.stderr, flush=True)
            return 130
        if debug or not user_error(exc):
            raise
        print(error_line(exc), file=sys.stderr, flush=True)
        return 2
    finally:
        warnings.showwarning = show_warning
        interrupts.restore(handler)


if __name__ == "__main__":
    sys.exit(main())
