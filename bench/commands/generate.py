"""``pobench generate``: sample a model on a task's prompts with any backend; ``--benchmark`` compares
backends' throughput (tokens/s) side by side and writes results/perf/generation.json."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="sample a model on a task's eval prompts (hf | vllm | openai); --benchmark compares them",
        description="Generate completions for a task's held-out prompts with one backend and write them as "
                    "JSONL, or with --benchmark run several backends on the same prompts and report "
                    "generated tokens per second side by side (JSON under results/perf/).")
    parser.add_argument("--model", default="smollm2-135m", help="short id, directory or hub id (default: %(default)s)")
    parser.add_argument("--task", default="imdb", help="task whose eval prompts to use (default: %(default)s)")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="tasks.get keyword, e.g. source=builtin (repeatable)")
    parser.add_argument("--backend", default="auto",
                        help="a backend of `bench.backends.available_backends()` (hf | vllm | openai) or auto "
                             "(default: %(default)s)")
    parser.add_argument("--backends", default="hf,vllm", help="--benchmark: backends to compare (default: %(default)s)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=1, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-url", help="openai backend: an existing server")
    parser.add_argument("--serve-python", help="openai backend: python of a vLLM env; pobench starts `vllm serve`")
    parser.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a backend option, e.g. batch_size=16 (hf), max_model_len=2048 (vllm) (repeatable; "
                             "with --benchmark each backend gets the options it has)")
    parser.add_argument("--out", help="JSONL of samples (default: stdout)")
    parser.add_argument("--benchmark", action="store_true", help="compare backends' tokens/s")
    parser.add_argument("--perf-out", default="results/perf/generation.json")
    parser.set_defaults(func=main)


def _task_kwargs(options: list[str]) -> dict:
    import yaml

    kwargs = {}
    for item in options:
        key, _, value = item.partition("=")
        kwargs[key] = yaml.safe_load(value)
    return kwargs


def _backend_options(backend_name: str, args: argparse.Namespace) -> dict:
    """--base-url, --serve-python and --backend-option as backend options; with --benchmark only
    those ``backend_name`` has (one command line serves several backends)."""
    from bench.backends import options_model, resolve_backend_name

    options = {"base_url": args.base_url, "serve_python": args.serve_python, **_task_kwargs(args.backend_option)}
    options = {k: v for k, v in options.items() if v is not None}
    if args.benchmark:
        model = options_model(resolve_backend_name(backend_name) if backend_name == "auto" else backend_name)
        options = {k: v for k, v in options.items() if model is not None and k in model.model_fields}
    return options


def _run(backend_name: str, model_path: str, prompts, sampling, args) -> tuple[list, dict]:
    from bench.backends import get_backend

    t0 = time.perf_counter()
    backend = get_backend(backend_name, model_path, dtype=args.dtype, options=_backend_options(backend_name, args))
    startup = time.perf_counter() - t0
    try:
        backend.generate(prompts[:2], sampling.replace(n=1), seed=args.seed)  # warm-up (not timed)
        backend.stats = {"generated_tokens": 0, "seconds": 0.0}
        samples = backend.generate(prompts, sampling, seed=args.seed)
        stats = dict(backend.stats)
    finally:
        backend.close()
    stats["startup_s"] = round(startup, 2)
    stats["tokens_per_s"] = stats["generated_tokens"] / stats["seconds"] if stats["seconds"] else None
    return samples, {"backend": backend.name, **stats}


def main(args: argparse.Namespace) -> int:
    import tasks
    from bench.manifest import hardware, package_versions
    from bench.models import resolve_model
    from bench.stages.data import sample_to_row
    from bench.store import atomic_write_json

    task = tasks.get(args.task, **_task_kwargs(args.task_option))
    prompts = task.eval_prompts(limit=args.prompts)
    sampling = task.sampling.replace(n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                     top_p=args.top_p)
    model_path = resolve_model(args.model).path
    if not args.benchmark:
        samples, stats = _run(args.backend, model_path, prompts, sampling, args)
        lines = "".join(json.dumps(sample_to_row(s), ensure_ascii=False) + "\n" for s in samples)
        if args.out:
            Path(args.out).write_text(lines)
        else:
            sys.stdout.write(lines)
        print(json.dumps(stats), file=sys.stderr)
        return 0
    results = []
    outputs = {}
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        samples, stats = _run(name, model_path, prompts, sampling, args)
        outputs[name] = [s.completion for s in samples]
        results.append(stats)
        print(f"{name:>7}: {stats['generated_tokens']} tokens in {stats['seconds']:.2f}s = "
              f"{stats['tokens_per_s']:.1f} tokens/s (start-up {stats['startup_s']:.1f}s)", file=sys.stderr)
    report = {"model": args.model, "task": args.task, "prompts": len(prompts), "n": args.n,
              "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "dtype": args.dtype,
              "results": results, "hardware": hardware(), "packages": package_versions(),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    by_name = {r["backend"]: r for r in results}
    if "vllm" in by_name and "hf" in by_name and by_name["hf"]["tokens_per_s"]:
        report["vllm_over_hf"] = by_name["vllm"]["tokens_per_s"] / by_name["hf"]["tokens_per_s"]
        print(f"vLLM / hf throughput ratio: {report['vllm_over_hf']:.2f}x", file=sys.stderr)
    if args.temperature == 0 and len(outputs) > 1:
        names = list(outputs)
        same = sum(a == b for a, b in zip(outputs[names[0]], outputs[names[1]]))
        report["greedy_identical"] = f"{same}/{len(outputs[names[0]])}"
    atomic_write_json(args.perf_out, report)
    print(json.dumps(report["results"], indent=2))
    return 0
