"""``pobench bench train``: performance benchmarks (a command, never a test); JSON under results/perf/."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="performance benchmarks (print and write results/perf/*.json)",
                                   description=__doc__)
    parser.add_argument("target", choices=["train"], help="train: our DPO vs TRL DPOTrainer, token-level vs DPO")
    parser.add_argument("--model", default="tiny", help="model id (tiny, smollm2-135m, a directory)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3, help="steps excluded from the timing")
    parser.add_argument("--prompt-words", type=int, default=24)
    parser.add_argument("--response-words", type=int, default=40)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for every configuration")
    parser.add_argument("--methods", default="tdpo2,sparsepo", help="token-level methods compared with DPO")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    parser.add_argument("--out", default="results/perf", help="output folder")
    parser.set_defaults(func=run)


def run(args) -> int:
    from bench.perf_train import benchmark_train
    from bench.store import atomic_write_text

    precision = "bf16" if args.bf16 else "fp32"
    try:
        report = benchmark_train(model=args.model, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                                 prompt_words=args.prompt_words, response_words=args.response_words,
                                 precision=precision, token_methods=tuple(m for m in args.methods.split(",") if m),
                                 trl=not args.no_trl)
    except (RuntimeError, ValueError) as exc:
        print(f"pobench bench: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(args.model).name)
    path = out_dir / f"train-{safe_model}-{precision}.json"
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True))
    print(json.dumps({"ratios": report["ratios"], "targets": report["targets"]}, indent=2))
    print(f"written: {path}")
    return 0
