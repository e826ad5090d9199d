"""The smoke suite end to end through the CLI: every method, every stage, a tiny model.

One uninterrupted run (module fixture); a cached re-run that computes nothing; a run killed with
SIGKILL in the middle and resumed, which must end with the same leaderboard; ``check`` on the real
leaderboard. About 2-3 minutes on 2 CPU cores.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import methods

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def pobench(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900, **kwargs)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    work, results = root / "work", root / "results"
    proc = pobench("run", "smoke", "--work-dir", str(work), "--results-dir", str(results))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work, results, proc


def rows_by_label(board: dict) -> dict[str, dict]:
    return {r["label"]: r for r in board["rows"]}


def test_every_method_and_stage_produces_a_leaderboard(smoke):
    work, results, _ = smoke
    for name in ("leaderboard.json", "leaderboard.csv", "leaderboard.md", "leaderboard.html",
                 "frontier_imdb.png", "bars_imdb.png"):
        assert (results / name).is_file(), name
    board = json.loads((results / "leaderboard.json").read_text())
    rows = rows_by_label(board)
    builtin = methods.available()[:11]
    assert {r["method"] for r in board["rows"]} == set(builtin) | {"reference"}
    assert {"dpo(beta=0.1)", "dpo(beta=0.5)"} <= rows.keys()  # the beta sweep gives two rows
    for row in board["rows"]:
        for metric in ("reward", "kl"):
            assert math.isfinite(row["metrics"][metric]["mean"]), (row["label"], metric)
        if row["kind"] == "measured":
            assert "reward" in row["vs_reference"]
    assert rows["reference"]["metrics"]["kl"]["mean"] == 0.0
    # every stage ran: prefdata, prep (TIS weights), train, generate, score
    for stage in ("prefdata", "prep", "train", "generate", "score"):
        assert any((work / stage).glob("*/record.json")), stage
    prep = json.loads(next((work / "prep").glob("*/record.json")).read_text())
    trained = {json.loads(p.read_text())["inputs"]["label"]: p.parent.name for p in (work / "train").glob("*/record.json")}
    # TIS-DPO's pi_plus is the suite's own DPO policy (same key), pi_minus a DPO run on swapped pairs
    assert prep["inputs"]["deps"]["pi_plus"] == f"train/{trained['train dpo(beta=0.1) s0']}"
    assert prep["inputs"]["deps"]["pi_minus"] == f"train/{trained['train dpo(beta=0.1) swapped s0']}"
    with open(results / "leaderboard.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(board["rows"])
    for line in table:
        assert float(line["reward_mean"]) == pytest.approx(rows[line["label"]]["metrics"]["reward"]["mean"], abs=1e-5)
    md = (results / "leaderboard.md").read_text()
    assert all(f"| {label} |" in md for label in rows)
    html = (results / "leaderboard.html").read_text()
    assert "<table class='board'" in html and html.count("data:image/png;base64,") == 2
    for png in ("frontier_imdb.png", "bars_imdb.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_records_carry_a_manifest(smoke):
    _, results, _ = smoke
    records = sorted((results / "runs").glob("*.json"))
    assert len(records) == 13
    record = json.loads(records[0].read_text())
    manifest = record["manifest"]
    assert manifest["git"]["sha"] and len(manifest["git"]["sha"]) == 40
    assert {"torch", "transformers"} <= manifest["packages"].keys()
    assert manifest["config_hash"] and manifest["seeds"] == [0]
    assert manifest["data_sources"]["imdb"]["kind"] == "builtin"
    assert manifest["hardware"]["cpu_count"] >= 1
    assert record["metrics"]["reward"] is not None and record["stages"]


def test_rerun_is_fully_cached_and_identical(smoke):
    work, results, _ = smoke
    before = json.loads((results / "leaderboard.json").read_text())
    stale = results / "runs" / "imdb__tiny__a-method-since-removed__s0.json"
    stale.write_text("{}")
    proc = pobench("run", "smoke", "--work-dir", str(work), "--results-dir", str(results))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(0 stages computed," in proc.stderr
    assert not stale.exists() and len(list((results / "runs").glob("*.json"))) == len(before["rows"])
    after = json.loads((results / "leaderboard.json").read_text())
    assert after["rows"] == before["rows"]
    plan = pobench("plan", "smoke", "--work-dir", str(work))
    assert "work left: nothing (all cached)" in plan.stdout
    rebuilt = pobench("leaderboard", "smoke", "--work-dir", str(work), "--results-dir", str(results / "rebuilt"),
                      "--from-work-dir", "--format", "json")
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert json.loads(rebuilt.stdout)["rows"] == before["rows"]
    # from the committed files alone: the run records and per-sample files, no work dir
    records = pobench("leaderboard", "smoke", "--work-dir", str(results / "no-such-work-dir"), "--results-dir",
                      str(results / "rebuilt"), "--format", "json")
    assert records.returncode == 0, records.stderr[-2000:]
    assert json.loads(records.stdout)["rows"] == before["rows"]


def test_resume_after_kill_9_equals_uninterrupted_run(smoke, tmp_path):
    _, results, _ = smoke
    work, out = tmp_path / "work", tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "smoke", "--work-dir", str(work),
                             "--results-dir", str(out)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    # kill while training is under way: after the 3rd finished train stage, a new one is running
    while time.time() < deadline and len(list((work / "train").glob("*/record.json"))) < 3:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "leaderboard.json").exists()
    resumed = pobench("run", "smoke", "--work-dir", str(work), "--results-dir", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    cached = int(resumed.stderr.split(" stages computed, ")[1].split(" cached")[0])
    assert cached >= 4  # prefdata, the reference row and three finished trainings were not redone
    a = rows_by_label(json.loads((results / "leaderboard.json").read_text()))
    b = rows_by_label(json.loads((out / "leaderboard.json").read_text()))
    assert a.keys() == b.keys()
    for label in a:
        for metric, stats in a[label]["metrics"].items():
            assert b[label]["metrics"][metric]["mean"] == pytest.approx(stats["mean"], abs=1e-9), (label, metric)


def test_check_against_the_real_leaderboard(smoke, tmp_path):
    _, results, _ = smoke
    baseline = results / "leaderboard.json"
    proc = pobench("check", "--baseline", str(baseline), "--current", str(baseline))
    assert proc.returncode == 0 and "OK:" in proc.stdout
    board = json.loads(baseline.read_text())
    dpo = next(r for r in board["rows"] if r["label"] == "dpo(beta=0.1)")
    dpo["metrics"]["reward"]["mean"] -= 1.0  # VADER rewards live in [-1, 1]: far outside any CI
    current = tmp_path / "current.json"
    current.write_text(json.dumps(board))
    proc = pobench("check", "--baseline", str(baseline), "--current", str(current))
    assert proc.returncode == 1, proc.stdout
    assert "imdb/tiny/dpo(beta=0.1)" in proc.stdout and "REGRESSED" in proc.stdout


def test_bench_suite_reports_every_stage_with_its_time_and_peak_memory(smoke, tmp_path):
    """`pobench bench suite --no-run` reads the finished smoke run: every node of the plan has its
    seconds and peak resident memory, the shares add up, and one evaluated point is costed."""
    work, _, _ = smoke
    proc = pobench("bench", "suite", "smoke", "--no-run", "--work-dir", str(work), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "suite-smoke.json").read_text())
    assert report["finished"] == report["stages"] == report["timed"] == len(report["nodes"]) > 0
    counts: dict[str, int] = {}
    for node in report["nodes"]:
        counts[node["stage"]] = counts.get(node["stage"], 0) + 1
        assert node["seconds"] >= 0 and node["peak_rss_mb"] >= node["rss_before_mb"] > 20, node
    assert {name: s["count"] for name, s in report["by_stage"].items()} == counts
    assert sum(s["share"] for s in report["by_stage"].values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(s["seconds"] for s in report["by_stage"].values()) == pytest.approx(report["stage_seconds"], abs=0.5)
    assert report["evaluated_point"]["total_s"] > 0
    assert report["peak_rss_mb"] == max(n["peak_rss_mb"] for n in report["nodes"])
    assert "one evaluated point" in proc.stdout and "generate" in proc.stdout
