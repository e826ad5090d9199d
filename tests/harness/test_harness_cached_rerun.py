"""What a cached re-run costs: imports and the report.

``pobench --help`` and listing the registries import no model, statistics or plotting library. A re-run
whose stages are all cached (the second ``pobench run``) imports no transformers, scipy or matplotlib:
its leaderboard files come from the work dir's ``report/<key>/`` entry, keyed by what they are computed
from, so nothing is recomputed or rewritten; a changed input (a report setting, a stage computed again)
writes them again. torch is still imported: validating the methods' hyperparameters and planning their
train keys builds the method classes (``methods/`` subclass ``torch.nn.Module``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
#: what takes seconds to import and only code that computes needs (models, statistics, plots, executors)
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "trl", "vllm", "lm_eval", "scipy", "matplotlib",
         "ray")
#: of those, what a fully cached re-run may import: torch (the methods, see the module docstring) and
#: accelerate (bench.train.preference, where the train keys' unread fields are decided, imports the engine)
CACHED_RERUN_MAY_IMPORT = {"torch", "accelerate"}
#: a smoke run of one method: 6 stages, ~15 s on 2 cores
TINY = ["smoke", "methods=dpo", "methods.dpo.beta=0.1", "train.steps=1"]


def heavy_imports(code: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """Run ``code`` in a fresh interpreter; the :data:`HEAVY` libraries it left in ``sys.modules``."""
    script = (f"{code}\nimport json, sys\n"
              f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.splitlines()[-1])), proc


def run_args(root: Path, *overrides: str) -> list[str]:
    return ["run", *TINY, *overrides, "--plain", "--work-dir", str(root / "work"),
            "--results-dir", str(root / "results")]


def cli(args: list[str]) -> str:
    """``bench.cli.main(args)`` in the script of :func:`heavy_imports` (its exit code must be 0)."""
    return f"from bench.cli import main\nassert main({args!r}) == 0"


def test_the_command_line_imports_no_heavy_library():
    found, _ = heavy_imports("from bench.cli import build_parser\n"
                             "parser = build_parser()\n"
                             "parser.format_help()\n"
                             "try:\n"
                             "    parser.parse_args(['run', '--help'])\n"
                             "except SystemExit:\n"
                             "    pass\n"
                             "import methods, tasks\n"
                             "from bench.backends import available_backends\n"
                             "from bench.train import PreferenceTrainConfig\n"
                             "assert 'dpo' in methods.available() and available_backends()")
    assert found == set()


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: (bytes, mtime_ns)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun")
    args = run_args(root)
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(6 stages computed, 0 cached)" in proc.stderr
    return root, args


@pytest.mark.slow
def test_a_cached_rerun_imports_no_model_statistics_or_plotting_library_and_rewrites_nothing(finished):
    root, args = finished
    results = root / "results"
    before = files(results)
    found, proc = heavy_imports(cli(args))
    assert "(0 stages computed, 6 cached)" in proc.stderr
    assert found <= CACHED_RERUN_MAY_IMPORT, found
    assert files(results) == before  # not even rewritten with the same bytes
    assert proc.stdout.startswith((results / "leaderboard.md").read_text())  # still printed
    # into a results dir removed since, at the same place: the same files, copied from the report entry
    for path in sorted(results.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    results.rmdir()
    found, _ = heavy_imports(cli(args))
    assert found <= CACHED_RERUN_MAY_IMPORT, found
    assert {name: data for name, (data, _) in files(results).items()} == {n: d for n, (d, _) in before.items()}


@pytest.mark.slow
def test_a_changed_input_writes_the_leaderboard_files_again(finished):
    root, args = finished
    results, work = root / "results", root / "work"
    first = {name: data for name, (data, _) in files(results).items()}
    board = json.loads(first["leaderboard.json"])
    # a report setting: the files are computed again (statistics and plots: scipy and matplotlib)
    found, proc = heavy_imports(cli(run_args(root, "report.bootstrap_resamples=500")))
    assert "(0 stages computed, 6 cached)" in proc.stderr and {"scipy", "matplotlib"} <= found
    again = json.loads((results / "leaderboard.json").read_text())
    assert again["manifest"]["suite"]["report"]["bootstrap_resamples"] == 500
    assert again["created_at"] >= board["created_at"] and len(list((work / "report").glob("*/record.json"))) == 2
    # back to the first inputs: the first entry, byte for byte (its created_at too)
    found, _ = heavy_imports(cli(args))
    assert found <= CACHED_RERUN_MAY_IMPORT
    assert {name: data for name, (data, _) in files(results).items()} == first
    # a stage computed again (its record differs: the seconds it took): a new report
    score = next(p.parent for p in (work / "score").glob("*/record.json")
                 if json.loads(p.read_text())["inputs"]["label"] == "score dpo s0")
    for path in sorted(score.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    found, proc = heavy_imports(cli(args))
    assert "(1 stages computed, 5 cached)" in proc.stderr and "matplotlib" in found
    assert len(list((work / "report").glob("*/record.json"))) == 3
    # an edited or deleted file of the results dir is put back from the entry; a stale run record goes
    current = {name: data for name, (data, _) in files(results).items()}
    (results / "leaderboard.md").write_text("edited")
    (results / "frontier_imdb.png").unlink()
    (results / "runs" / "imdb__tiny__a-method-since-removed__s0.json").write_text("{}")
    found, _ = heavy_imports(cli(args))
    assert found <= CACHED_RERUN_MAY_IMPORT
    assert {name: data for name, (data, _) in files(results).items()} == current
