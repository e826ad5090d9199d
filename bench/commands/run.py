"""``pobench run [SUITE] [KEY=VALUE ...]``: run a suite end to end (default: the offline CPU suite)."""
from __future__ import annotations

import argparse

from bench.commands._suite_args import add_suite_arguments, suite_command
from bench.config import ConfigError, SuiteConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a suite: sft -> prefdata -> prep -> train -> generate (+ pairs) -> score -> report",
        description="Run a suite end to end. Finished stages are cached in the work dir (keyed by the hash "
                    "of their inputs and of the data they read): a re-run skips them and an interrupted run "
                    "resumes. Model-evaluation tasks of the suite (`eval_tasks: [reasoning]`, e.g. lm-eval "
                    "GSM8K/ARC; `eval.limit` items per benchmark) run on every trained policy and the "
                    "reference, and their metrics become extra leaderboard columns. Leaderboard files and run "
                    "records go to <work dir>/results/<suite>/ (--results-dir results/<suite> to publish), "
                    "so a run never replaces the committed results/<suite>/ it is checked against. "
                    "Progress on stderr: a start and an end line per stage ([N/M], elapsed, ETA from the "
                    "plan's work at the rates measured so far) and the training steps with their loss; bars "
                    "on a terminal, plain lines otherwise; the leaderboard (markdown) on stdout at the end.")
    add_suite_arguments(parser, results_default="<work dir>/results/<suite name>")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--plain", action="store_true",
                       help="plain log lines, no bars, carriage returns or escape sequences (the default when "
                            "stderr is not a terminal, e.g. in CI)")
    shown.add_argument("--quiet", "-q", action="store_true",
                       help="print only errors and the final line (where the leaderboard went), nothing on stdout")
    parser.add_argument("--data-dir", dest="shared_data", metavar="DIR",
                        help="the folder of the tasks' local data in their original formats (imdb/, hh-rlhf/, "
                             "mbpp/, ...): the same as POBENCH_SHARED_DATA=DIR (default: $POBENCH_SHARED_DATA, "
                             "else ../shared/data beside the repository)")
    parser.set_defaults(func=main)


def use_data_dir(folder: str | None) -> None:
    """``--data-dir DIR``: where tasks look for local data (``tasks.base.shared_data_dir``), for this
    process and the workers it starts, exactly as ``POBENCH_SHARED_DATA=DIR`` does."""
    import os
    from pathlib import Path

    if not folder:
        return
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--data-dir {folder}: not a directory; give the folder that holds the tasks' data "
                          "folders (imdb/, hh-rlhf/, mbpp/, ...)")
    os.environ["POBENCH_SHARED_DATA"] = str(path)


@suite_command
def main(args: argparse.Namespace, suite: SuiteConfig) -> int:
    from bench.progress import choose_mode
    from bench.runner import run_suite
    from bench.stages import ensure_threads

    use_data_dir(args.shared_data)
    ensure_threads()
    result = run_suite(suite, mode=choose_mode(quiet=args.quiet, plain=args.plain))
    if not args.quiet:
        print(open(result["written"]["md"]).read())
    return 0
