"""executor.jobs > 1: stages run at once in worker processes and compute what one-after-the-other
execution computes with the same torch threads (the thread count changes float32 rounding, so it is
fixed per stage: executor.threads)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = ["smoke", "methods={dpo: {beta: 0.1}, tdpo2: {}, sparsepo: {}}"]


def run(root: Path, *overrides: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", *SUITE, *overrides, "--plain",
                           "--work-dir", str(root / "work"), "--results-dir", str(root / "results")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def outputs(root: Path) -> dict[str, bytes]:
    """Every stage's output files (records left out: they hold times and paths), by stage/key/file."""
    work = root / "work"
    return {str(path.relative_to(work)): path.read_bytes() for path in sorted(work.glob("*/*/*"))
            if path.is_file() and path.parent.parent.name in ("prefdata", "generate", "score")
            and path.name != "record.json"}


def losses(root: Path) -> dict[str, list[float]]:
    return {path.parent.name: [json.loads(line)["loss"] for line in path.read_text().splitlines()]
            for path in (root / "work" / "trainer").glob("*/metrics.jsonl")}


@pytest.mark.slow
def test_two_jobs_compute_what_one_after_the_other_computes(tmp_path):
    one = run(tmp_path / "one")  # OMP_NUM_THREADS=1: one-thread stages in this process
    two = run(tmp_path / "two", "executor.jobs=2", "executor.threads=1")
    # stages overlapped: a second one started before the first one running had finished
    events = re.findall(r"^\[pobench\] \[[ \d]+/\d+\] (start|done) ", two, flags=re.M)
    depth = max(sum(1 if e == "start" else -1 for e in events[:i + 1]) for i in range(len(events)))
    assert depth == 2, two[-2000:]
    a, b = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert a and a.keys() == b.keys()  # the same stage keys
    assert [name for name in a if a[name] != b[name]] == []  # the same samples, scores and pairs, byte for byte
    assert losses(tmp_path / "one") == losses(tmp_path / "two") and len(losses(tmp_path / "one")) == 3
    # a cached re-run starts no worker
    again = run(tmp_path / "two", "executor.jobs=2", "executor.threads=1")
    assert "12 cached" in again.replace("0 stages computed, ", ""), again[-500:]


def test_a_failing_stage_stops_the_run_with_its_label(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "smoke", "methods={dpo: {beta: 0.1}}",
                           "models=[{id: /nonexistent/model/dir}]", "executor.jobs=2", "--plain",
                           "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr  # one line for people (--debug for the traceback)
    assert "/nonexistent/model/dir" in proc.stdout + proc.stderr


def test_default_suite_trainings_know_their_companions_on_the_same_pairs():
    """Every training of the default suite is told the other methods trained on its pairs (so that the first
    runs compute one reference pass for all of them); nothing but training has companions, and they are
    not part of any key (a suite of two methods trains DPO under the same key)."""
    from bench.config import load_suite
    from bench.plan import build_plan

    plan = build_plan(load_suite("default"))
    trains = {node.label: node for node in plan.nodes if node.stage == "train"}
    everyone = {(n.params.method, json.dumps(n.params.hparams, sort_keys=True)) for n in trains.values()}
    assert len(everyone) == 7  # DPO and its swapped twin have the same method and hparams
    for node in trains.values():
        mine = (node.params.method, json.dumps(node.params.hparams, sort_keys=True))
        assert {(name, hparams) for name, hparams, _ in node.companions} == everyone - {mine}, node.label
    settings = {name: json.loads(s) for name, _, s in trains["train dpo s0"].companions}
    assert set(settings) == {"tdpo1", "tdpo2", "tis_dpo", "bcr", "sparsepo_mapo", "sparsepo"}
    # what each companion's own run reads: TDPO its summary (the suite's default), BCR never
    assert settings["tdpo1"]["token_reference"] == "cached" and settings["bcr"]["token_reference"] == "online"
    assert all(not n.companions for n in plan.nodes if n.stage != "train")
    again = build_plan(load_suite("default", ["methods={dpo: {}, tdpo2: {}}"]))
    assert [n.key for n in again.nodes if n.label == "train dpo s0"] == [trains["train dpo s0"].key]
    assert [c[0] for c in next(n for n in again.nodes if n.label == "train dpo s0").companions] == ["tdpo2"]