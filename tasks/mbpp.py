"""MBPP: Mostly Basic Python Problems (Austin et al. 2021, "Program Synthesis with Large Language
Models"): 974 crowd-sourced problems, each a description, a reference solution and three asserts.

Dataset: ``google-research-datasets/mbpp`` on the hub (configs "full" and "sanitized"), or the
original files locally: ``<data_dir>/mbpp/mbpp.jsonl`` (full) or ``<data_dir>/mbpp/sanitized-mbpp.json``
(the 427 hand-verified problems). Option ``variant``: full | sanitized.

Splits (the paper's, by task id): prompt 1-10, test 11-510, validation 511-600, train 601-974.
Eval prompts are the test split; training prompts (for generated preference pairs and SFT) the
train split. The prompt is the bigcode-evaluation-harness format: a docstring holding the
description and the first test, so the model sees the function name; a completion is the whole
program. The sandbox runs the completion, then ``test_setup_code`` (full) or ``test_imports``
(sanitized) and the asserts, in a namespace holding the completion's names.

Metrics: unbiased pass@k. Preference pairs: passing vs failing samples of the same problem; a problem
none of whose samples passes gets its reference solution as the chosen program (``reference_fallback``,
the reference first run against the same tests), so a model that cannot solve the train problems yet
still gets pairs. Tags: code, functional-correctness, generated-preferences.
"""
from __future__ import annotations

import ast
import builtins
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

from tasks.base import (DataError, DataSource, PreferencePair, Sample, Sampling, SFTExample, SourceUsed, TaskError,
                        file_fingerprint, limit_list, read_jsonl)
from tasks.code_eval import CodeProblem, CodeSample, CodeTask, evaluate, normalise_task_id, preference_pairs

HUB_ID = "google-research-datasets/mbpp"
LOCAL_FILES = {"full": "mbpp/mbpp.jsonl", "sanitized": "mbpp/sanitized-mbpp.json"}
SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


def _id_order(task_id: str) -> tuple:
    return (0, int(task_id), "") if task_id.isdigit() else (1, 0, task_id)


def split_of(task_id: int) -> str:
    for split, (low, high) in SPLITS.items():
        if low <= task_id <= high:
            return split
    raise ValueError(f"MBPP task id {task_id} is outside 1-974")


def names_tests_call_on_purpose(reference: str, test: str) -> tuple[str, ...]:
    """Builtin names the reference solution redefines and the tests use (task 126 defines ``sum``):
    the tests must see the solution's version of exactly these."""
    try:
        with warnings.catch_warnings():  # references hold regexes like '\d' in plain strings
            warnings.simplefilter("ignore")
            defined = {node.name for node in ast.parse(reference).body
                       if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
            used = {node.id for node in ast.walk(ast.parse(test)) if isinstance(node, ast.Name)}
    except SyntaxError:
        return ()
    return tuple(sorted(name for name in defined & used if hasattr(builtins, name)))


def format_prompt(description: str, first_test: str) -> str:
    return f'"""\n{description.strip()}\n{first_test.strip()}\n"""\n'


def problem_from_record(record: dict[str, Any], variant: str) -> CodeProblem:
    task_id = int(record["task_id"])
    if variant == "full":
        description, setup = record["text"], record.get("test_setup_code") or ""
    else:
        description, setup = record["prompt"], "\n".join(record.get("test_imports") or [])
    tests = list(record["test_list"])
    test = f"{setup}\n" + "\n".join(tests) + "\n"
    reference = record["code"].replace("\r\n", "\n")
    return CodeProblem(task_id=str(task_id), prompt=format_prompt(description, tests[0]), test=test,
                       reference=reference, keep_names=names_tests_call_on_purpose(reference, test),
                       meta={"split": split_of(task_id)})


def _check_record(record: Any, variant: str) -> str | None:
    if not isinstance(record, dict):
        return f"expected an object, got {type(record).__name__}"
    needed = {"full": ("task_id", "text", "code", "test_list"), "sanitized": ("task_id", "prompt", "code", "test_list")}
    missing = [f for f in needed[variant] if f not in record]
    if missing:
        return f"missing field(s) {missing}"
    if not isinstance(record["test_list"], list) or not record["test_list"]:
        return "'test_list' must be a non-empty list of assert statements"
    try:
        split_of(int(record["task_id"]))
    except (TypeError, ValueError) as exc:
        return f"bad task_id: {exc}"
    return None


def read_problem_file(path: Path, variant: str) -> dict[str, CodeProblem]:
    """Problems from mbpp.jsonl (full) or sanitized-mbpp.json; bad records raise DataError."""
    records: list[tuple[int | None, Any]] = []
    if path.suffix == ".jsonl":
        records.extend(read_jsonl(path, strict=True, column=False))
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(path, exc.lineno, f"invalid JSON ({exc.msg})") from None
        except UnicodeDecodeError as exc:
            raise DataError(path, None, f"not UTF-8 text (byte {exc.start + 1} of the file); save it as UTF-8") from None
        if not isinstance(data, list):
            raise DataError(path, None, "expected a JSON list of problems")
        records = [(None, r) for r in data]
    problems: dict[str, CodeProblem] = {}
    for index, (line_no, record) in enumerate(records):
        reason = _check_record(record, variant)
        if reason:
            raise DataError(path, line_no if line_no is not None else index + 1,
                            reason + ("" if line_no is not None else " (record index, 1-based)"))
        problem = problem_from_record(record, variant)
        problems[problem.task_id] = problem
    return problems


class MBPP(CodeTask):
    name = "mbpp"
    # 2: pairs fall back on the reference solution when no sample passes; per-sample pass@k values
    version = "2"
    description = "MBPP (974 basic Python problems; test split 11-510), pass@k in the pobench sandbox"
    paper = "Austin et al. 2021, Program Synthesis with Large Language Models (arXiv:2108.07732)"
    sources = (
        DataSource("hub", HUB_ID, "Google Research MBPP (configs full / sanitized)", "train/test/validation/prompt"),
        DataSource("local", "mbpp", "mbpp.jsonl (full) or sanitized-mbpp.json (sanitized)"),
    )
    sampling = Sampling(max_new_tokens=512, temperature=0.2, top_p=0.95, n=1,
                        stop=("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```"))
    preference_mode = "generated"
    options = {**CodeTask.options, "variant": ("full", "full (974 problems) or sanitized (427 hand-verified)"),
               "reference_fallback": (True, "preference pairs: when no sample of a problem passes, its reference "
                                      "solution (run against the same tests first) is the chosen program against "
                                      "the failing samples")}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.variant not in LOCAL_FILES:
            raise TaskError(f"mbpp: variant must be one of {sorted(LOCAL_FILES)}, got {self.variant!r}")
        #: what the last pairs_from_samples saw per outcome (problem ids), for no_pairs_advice
        self._pairing: dict[str, list[str]] = {}

    def pairs_from_samples(self, samples: Sequence[Sample], margin: float | None = None,
                           rewards: Sequence[float] | None = None, pairs: str = "best_worst") -> list[PreferencePair]:
        """Per problem, passing (chosen) vs failing (rejected) samples, at most ``max_pairs_per_problem``.
        With ``reference_fallback`` a problem whose samples all fail pairs its reference solution (chosen,
        ``meta["chosen_source"] = "reference"``) with them, once the reference has passed the problem's tests
        in the sandbox (a reference that fails gives no pair and is reported by :meth:`no_pairs_advice`)."""
        if pairs != "best_worst":
            return super().pairs_from_samples(samples, margin, rewards, pairs)  # refuses it, naming the option
        rewards = list(rewards) if rewards is not None else self.reward(samples)
        problems = self.problems()
        rows = [{"task_id": self.alias(s.prompt_id), "completion": s.completion, "passed": r > 0.5}
                for s, r in zip(samples, rewards)]
        passing = {row["task_id"] for row in rows if row["passed"]}
        failing = {row["task_id"] for row in rows if not row["passed"]}
        self._pairing = {"all_pass": sorted(passing - failing, key=_id_order),
                         "none_pass": sorted(failing - passing, key=_id_order), "reference_fails": []}
        fallback: set[str] = set()
        if self.reference_fallback and self._pairing["none_pass"]:
            need = self._pairing["none_pass"]
            checked = evaluate(problems, [CodeSample(t, problems[t].reference, 0) for t in need], self.sandbox(),
                               ks=(1,))
            for task_id, row in zip(need, checked.per_sample):
                if row["passed"]:
                    fallback.add(task_id)
                    rows.append({"task_id": task_id, "completion": problems[task_id].reference, "passed": True})
                else:
                    self._pairing["reference_fails"].append(f"{task_id} ({row['result']})")
        out = preference_pairs(problems, rows, int(self.max_pairs_per_problem))
        for pair in out:
            fell_back = pair.meta["task_id"] in fallback
            pair.meta["chosen_source"] = "reference" if fell_back else "sample"
        return out

    def no_pairs_advice(self, samples: Sequence[Sample], rewards: Sequence[float], settings: dict[str, Any]) -> str:
        """Why :meth:`pairs_from_samples` gave no pair, from what it saw (a pair needs a failing sample: with
        ``reference_fallback`` the reference solution stands in for a passing one)."""
        seen = self._pairing
        problems = len({s.prompt_id for s in samples})
        parts = [f"{len(samples)} samples of {problems} MBPP train problem(s) run against their tests"]
        if seen.get("all_pass"):
            parts.append(f"every sample of {len(seen['all_pass'])} problem(s) passed, leaving nothing to reject "
                         f"(e.g. {', '.join(seen['all_pass'][:5])})")
        if seen.get("reference_fails"):
            parts.append(f"in {len(seen['reference_fails'])} problem(s) no sample passed and the reference solution "
                         f"fails its own tests too, so it cannot be the chosen program: "
                         f"{', '.join(seen['reference_fails'][:3])} (check the data file)")
        if seen.get("none_pass") and not self.reference_fallback:
            parts.append(f"in {len(seen['none_pass'])} problem(s) no sample passed; set "
                         "task_options.mbpp.reference_fallback: true to pair their reference solutions with the "
                         "failing samples")
        advice = (f"more failing samples: raise prefdata.samples_per_prompt (now {settings.get('samples_per_prompt')}) "
                  f"or prefdata.temperature (now {settings.get('temperature')}), or add problems (prefdata.prompts: "
                  f"{settings.get('prompts')})") if seen.get("all_pass") else ""
        return "; ".join(parts) + (f"; {advice}" if advice else "")

    def local_root(self) -> Path | None:
        # the task needs the variant's file, not just the folder
        for root in ([self.data_dir] if self.data_dir else [self._shared()]):
            if root is not None and (root / LOCAL_FILES[self.variant]).is_file():
                return root
        return None

    @staticmethod
    def _shared() -> Path:
        from tasks.base import shared_data_dir
        return shared_data_dir()

    def _load(self) -> dict[str, CodeProblem]:
        kind = self.resolve_source()
        if kind == "hub":
            problems: dict[str, CodeProblem] = {}
            for split in ("train", "test", "validation", "prompt"):
                ds = self.load_hub(HUB_ID, self.variant, split=split,
                                   offline_hint="--source local/--data-dir with mbpp/mbpp.jsonl")
                for row in ds:
                    problem = problem_from_record(dict(row), self.variant)
                    problems[problem.task_id] = problem
            self._note_hub(HUB_ID, f"config={self.variant}")
            return problems
        path = self.local_root() / LOCAL_FILES[self.variant]
        problems = read_problem_file(path, self.variant)
        self._note_source(SourceUsed("local", str(path), f"variant={self.variant}, {len(problems)} problems",
                                     file_fingerprint([path])))
        return problems

    def _ids(self, split: str) -> list[str]:
        return sorted((t for t, p in self.problems().items() if p.meta["split"] == split), key=int)

    def eval_ids(self) -> list[str]:
        return self._ids("test")

    def train_ids(self) -> list[str]:
        return self._ids("train")

    def sft_data(self, limit: int | None = None) -> list[SFTExample]:
        problems = self.problems()
        return [SFTExample(prompt=problems[i].prompt, completion=problems[i].reference, id=i)
                for i in limit_list(self.train_ids(), limit)]

    @staticmethod
    def alias(task_id: str) -> str:
        """evalplus/bigcode spell MBPP ids "Mbpp/11"; pobench uses "11"."""
        task_id = normalise_task_id(task_id)
        return task_id.split("/", 1)[1] if task_id.lower().startswith("mbpp/") else task_id
