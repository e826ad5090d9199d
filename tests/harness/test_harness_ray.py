"""The ray executor on a real local Ray cluster (loopback): same leaderboard as the local executor."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'pobench[ray]' -c constraints/cpu.txt")
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SUBSET = ["methods=dpo,ipo,simpo", "methods.dpo.beta=0.1", "prefdata.prompts=8", "generation.prompts=4"]


def run(tmp: Path, executor: str) -> dict:
    # one thread in both runs: Ray workers get OMP_NUM_THREADS=num_cpus=1, and float reductions
    # (hence sampled text) may differ with the thread count
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "smoke", *SUBSET, "--executor", executor,
                           "--work-dir", str(tmp / "work"), "--results-dir", str(tmp / "results")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp / "results" / "leaderboard.json").read_text())


def test_ray_executor_matches_local(tmp_path):
    on_ray = run(tmp_path / "ray", "ray")
    local = run(tmp_path / "local", "local")
    assert on_ray["manifest"]["suite"]["executor"]["kind"] == "ray"
    by_label = {r["label"]: r for r in local["rows"]}
    assert {r["label"] for r in on_ray["rows"]} == set(by_label) == {"reference", "dpo", "ipo", "simpo"}
    for row in on_ray["rows"]:
        for metric, stats in row["metrics"].items():
            assert stats["mean"] == pytest.approx(by_label[row["label"]]["metrics"][metric]["mean"], abs=1e-9)
    # every stage output was written by Ray workers into the shared store
    assert len(list((tmp_path / "ray" / "work" / "score").glob("*/record.json"))) == 4
