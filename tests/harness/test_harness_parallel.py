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


def test_a_stage_whose_shared_work_is_all_running_starts_after_the_others():
    """next_to_start: DPO's reverse twin reads the reference log-probs DPO is computing, so TDPO (which
    also has its KL summary to compute) starts next to DPO first; alone, the twin still starts."""
    from types import SimpleNamespace

    from bench.executors import next_to_start

    logps, summary = "reference logps of d", "reference summary of d"
    node = {name: SimpleNamespace(label=name, shares=frozenset(s)) for name, s in
            {"dpo": {logps}, "dpo swapped": {logps}, "tdpo": {logps, summary}, "generate": set()}.items()}
    shares = lambda n: n.shares  # noqa: E731
    pick = lambda ready, running: next_to_start([node[r] for r in ready], [node[r] for r in running], shares).label  # noqa: E731,E501
    assert pick(["dpo", "dpo swapped", "tdpo"], []) == "dpo"
    assert pick(["dpo swapped", "tdpo"], ["dpo"]) == "tdpo"  # the twin would wait or compute the same pass
    assert pick(["dpo swapped", "generate"], ["tdpo"]) == "generate"  # a stage without shared work
    assert pick(["dpo swapped"], ["dpo"]) == "dpo swapped"  # nothing else to start: a core is not left idle
    assert pick(["tdpo"], ["dpo swapped"]) == "tdpo"
    assert next_to_start([], [node["dpo"]], shares) is None


def test_default_suite_trainings_share_their_reference_passes():
    """The train stage's shares: one log-probs pass for every method of the default suite's pairs, the
    KL summary for TDPO, its own mask pass for SparsePO-MaPO; nothing shared across data."""
    from bench.config import load_suite
    from bench.plan import build_plan
    from bench.stages import stage

    plan = build_plan(load_suite("default"))
    shares = {node.label: stage(node.stage).shares(node) for node in plan.nodes if node.stage == "train"}
    logps = {s for s in shares["train dpo s0"]}
    assert len(logps) == 1 and all(logps <= s for s in shares.values())
    assert shares["train dpo(beta=0.1) swapped s0"] == shares["train tis_dpo s0"] == shares["train dpo s0"]
    assert shares["train tdpo1 s0"] == shares["train tdpo2 s0"] and len(shares["train tdpo1 s0"]) == 2
    assert any("masks sparsepo_mapo" in s for s in shares["train sparsepo_mapo s0"])
    assert all(not stage(n.stage).shares(n) for n in plan.nodes if n.stage != "train")
    other = build_plan(load_suite("default", ["prefdata.data_seed=1"]))
    assert not {s for n in other.nodes if n.stage == "train" for s in stage(n.stage).shares(n)} & logps
