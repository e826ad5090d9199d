"""The check that would have caught a TIS-DPO plumbing bug: with every token weight 1 (EOS included,
``preparation.tis_weights.transform: uniform``) TIS-DPO's loss is DPO's, so a real pipeline run - the
contrastive pair trained, the weights estimated and stored with the pairs, TIS-DPO trained on them,
sampled and scored - must give DPO's policy exactly: the same samples, rewards and KL, sample by sample.
Weights misaligned to tokens, pairs reordered or dropped by the preparation stage, or a token left out
of the loss would all show here. (The drift of TIS-DPO's default rank weights is the method, not the
pipeline: results/perf/tis_dpo_anomaly.json.)"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def samples(results: Path, run: str) -> list[dict]:
    (path,) = (results / "runs").glob(f"imdb__tiny__{run}__s0__step2.samples.jsonl.gz")
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_tis_dpo_with_uniform_weights_trains_dpos_policy_through_the_whole_pipeline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "smoke", "methods=dpo,tis_dpo",
                           "preparation.tis_weights.transform=uniform", "--quiet",
                           "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "results")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the preparation stage stored weight 1 for every completion token of both responses
    (prep,) = (tmp_path / "work" / "prep").glob("*/pairs.jsonl")
    rows = [json.loads(line) for line in prep.read_text().splitlines()]
    assert rows and all(set(r["weights_chosen"]) == {1.0} and set(r["weights_rejected"]) == {1.0} for r in rows)
    # the smoke suite's DPO sweeps beta over 0.1 and 0.5; TIS-DPO's beta is 0.1
    dpo, tis = samples(tmp_path / "results", "dpo_beta=0.1_"), samples(tmp_path / "results", "tis_dpo")
    assert len(dpo) == len(tis) == 16
    assert [s["completion"] for s in tis] == [s["completion"] for s in dpo]
    assert [s["scores"] for s in tis] == [s["scores"] for s in dpo]
    # and the samples do depend on the policy: DPO at beta 0.5 scores otherwise (per-sample KL; its tokens may all be
    # the same, since every policy draws with the same uniforms on a prompt and these two tiny runs barely differ)
    assert [s["scores"] for s in samples(tmp_path / "results", "dpo_beta=0.5_")] != [s["scores"] for s in dpo]
