"""configs/code.yaml end to end at tiny scale: the tiny random model on the first 2 MBPP train problems of
../shared/data (skipped without it), pairs built by execution, DPO on 2 seeds, pass@k on the first 2 MBPP test and
HumanEval problems in the sandbox, through ``pobench run`` as a user runs it. A random model's programs never pass,
so every pair falls back on the problem's reference solution (checked against the file itself)."""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from bench.cli import main
from tasks.base import shared_data_dir

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
MBPP = shared_data_dir() / "mbpp" / "mbpp.jsonl"
TINY = ["models.0.id=tiny", "methods=dpo", f"task_options.mbpp.data_dir={shared_data_dir()}",
        "task_options.mbpp.source=local", "task_options.mbpp.workers=2", "task_options.humaneval.source=builtin",
        "task_options.humaneval.workers=2", "prefdata.prompts=2", "prefdata.samples_per_prompt=2",
        "prefdata.max_new_tokens=8", "train.steps=2", "train.batch_size=2", "train.checkpoint_every=0",
        "generation.backend=hf", "generation.prompts=2", "generation.samples_per_prompt=2",
        "generation.max_new_tokens=8", "report.bootstrap_resamples=200"]


@pytest.mark.skipif(not MBPP.is_file(), reason=f"{MBPP} not found: the code suite's MBPP problems (set "
                    "POBENCH_SHARED_DATA to a folder holding mbpp/mbpp.jsonl)")
def test_code_suite_end_to_end_at_tiny_scale(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POBENCH_CACHE", str(tmp_path / "cache"))
    started = time.perf_counter()
    work, results = tmp_path / "work", tmp_path / "results"
    code = main(["run", str(REPO / "configs" / "code.yaml"), *TINY, "--work-dir", str(work),
                 "--results-dir", str(results), "--plain"])
    print(f"\ncode suite at tiny scale: {time.perf_counter() - started:.1f} s")
    assert code == 0, capsys.readouterr().err[-4000:]

    # the pairs: per train problem (601, 602) its reference solution against each failing sample
    references = {}
    for line in MBPP.read_text().splitlines():
        record = json.loads(line)
        if record["task_id"] in (601, 602):
            references[str(record["task_id"])] = record["code"].replace("\r\n", "\n")
    (prefdata,) = list((work / "prefdata").glob("*/pairs.jsonl"))
    pairs = [json.loads(line) for line in prefdata.read_text().splitlines()]
    samples = [json.loads(line) for line in (prefdata.parent / "samples.jsonl").read_text().splitlines()]
    assert all(s["reward"] == 0.0 for s in samples)  # random programs fail
    expected = sorted((s["prompt_id"], references[s["prompt_id"]], s["completion"]) for s in samples)
    assert sorted((p["meta"]["task_id"], p["chosen"], p["rejected"]) for p in pairs) == expected
    assert {p["meta"]["chosen_source"] for p in pairs} == {"reference"}

    board = json.loads((results / "leaderboard.json").read_text())
    assert board["primary_metric"] == {"mbpp": "pass@1", "humaneval": "pass@1"}
    rows = {(r["task"], r["label"]): r for r in board["rows"]}
    assert set(rows) == {(t, m) for t in ("mbpp", "humaneval") for m in ("reference", "dpo")}
    for (task, label), row in rows.items():
        assert row["seeds"] == [0, 1]
        stats = row["metrics"]["pass@1"]
        assert stats["ci_over"] == "seeds and prompts (hierarchical bootstrap)" and stats["n_prompts"] == 2
        # pass@1 from the evidence files: per seed, the share of passing programs (2 problems x 2 programs)
        per_seed = []
        for seed in (0, 1):
            step = "__step2" if label == "dpo" else ""  # a trained policy's record names its final step
            name = f"{task}__tiny__{label}__s{seed}{step}.samples.jsonl.gz"
            evidence = [json.loads(x) for x in gzip.decompress((results / "runs" / name).read_bytes()).splitlines()]
            assert len(evidence) == 4 and all(e["scores"]["pass@1"] == float(e["scores"]["passed"]) for e in evidence)
            per_seed.append(sum(e["scores"]["passed"] for e in evidence) / 4)
        assert stats["mean"] == pytest.approx(sum(per_seed) / 2)
        assert stats["ci"][0] <= stats["mean"] <= stats["ci"][1]
        if label == "dpo":
            vs = row["vs_reference"]["pass@1"]
            assert vs["ci_over"] == "seeds and prompts (paired hierarchical bootstrap)" and vs["ci"] is not None
    # the programs were sampled at temperature 0.8: no KL, and the record says why
    record = json.loads((results / "runs" / "humaneval__tiny__dpo__s0__step2.json").read_text())
    assert "kl" not in record["metrics"] and "temperature 0.8" in record["notes"]["kl"]
