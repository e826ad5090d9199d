"""``pobench bench train|suite``: performance benchmarks (commands, never tests); JSON under results/perf/."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.commands._suite_args import add_suite_arguments, suite_command


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="performance benchmarks (print and write results/perf/*.json)",
                                   description=__doc__)
    targets = parser.add_subparsers(dest="target", metavar="{train,suite}", required=True)

    train = targets.add_parser("train", help="training step: our DPO vs TRL DPOTrainer, token-level methods vs DPO")
    train.add_argument("--model", default="tiny", help="model id (tiny, smollm2-135m, a directory)")
    train.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    train.add_argument("--steps", type=int, default=8)
    train.add_argument("--warmup", type=int, default=3, help="steps excluded from the timing")
    train.add_argument("--prompt-words", type=int, default=24)
    train.add_argument("--response-words", type=int, default=40)
    train.add_argument("--bf16", action="store_true", help="bf16 autocast for every configuration")
    train.add_argument("--methods", default="tdpo2,sparsepo", help="token-level methods compared with DPO")
    train.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    train.add_argument("--lora", action="store_true",
                       help="the suites' recipe: a LoRA adapter (r=16, alpha=32, dropout 0, q/k/v/o_proj) for our "
                            "runs and TRL's (peft_config); the reference is the base with adapters disabled")
    train.add_argument("--rounds", type=int, default=1,
                       help="run every configuration N times, alternating forward and reversed order; "
                            "figures are medians over all rounds' timed steps")
    train.add_argument("--out", default="results/perf", help="output folder")
    train.set_defaults(func=run)

    suite = targets.add_parser(
        "suite", help="a suite's time and peak memory per stage kind",
        description="Run SUITE (finished stages are cached as with `pobench run`), then report from the stage "
                    "records of its plan: per stage kind the count, seconds, share of all stage time and the "
                    "largest peak resident memory, and the cost of one evaluated point (generate + score). "
                    "Writes results/perf/suite-<name>.json. Seconds are those of the run that computed each "
                    "stage: run on an idle machine from an empty work dir for figures worth comparing.")
    add_suite_arguments(suite, results_default="<work dir>/results/<suite name>")
    suite.add_argument("--no-run", action="store_true",
                       help="do not run: report what the work dir already has (unfinished stages are counted)")
    suite.add_argument("--out", default="results/perf", help="output folder")
    suite.set_defaults(func=run_suite_profile)


@suite_command
def run_suite_profile(args, suite) -> int:
    from bench.perf_suite import format_profile, profile_suite
    from bench.stages import ensure_threads
    from bench.store import atomic_write_text

    ensure_threads()
    report = profile_suite(suite, run=not args.no_run, mode="plain")
    out = Path(args.out) / f"suite-{suite.name}.json"
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(format_profile(report))
    print(f"written: {out}")
    return 0


def run(args) -> int:
    from bench.perf_train import benchmark_train

    precision = "bf16" if args.bf16 else "fp32"
    try:
        report = benchmark_train(model=args.model, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                                 prompt_words=args.prompt_words, response_words=args.response_words,
                                 precision=precision, token_methods=tuple(m for m in args.methods.split(",") if m),
                                 trl=not args.no_trl, lora=args.lora, rounds=args.rounds, out_dir=args.out)
    except (RuntimeError, ValueError) as exc:
        print(f"pobench bench: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"ratios": report["ratios"], "targets": report["targets"]}, indent=2))
    print(f"written: {report['output']}")
    return 0
