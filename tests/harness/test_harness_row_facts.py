"""Every leaderboard row says what it was computed from: its data (kind, short, fingerprint), prompts x
samples, training steps and the checkpoint evaluated, the method's hyperparameters, and the malformed
records its tasks skipped; json (added fields only), csv, md and html."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from bench import report
from bench.leaderboard import build_leaderboard
from bench.runner import rebuild_from_records

REPO = Path(__file__).resolve().parents[2]
BUILTIN = {"kind": "builtin", "location": "tasks/data/imdb_openings.txt", "detail": "review openings",
           "fingerprint": "ce50de38ba5f5c68"}
LOCAL = {"kind": "local", "location": "<shared-data>/imdb", "detail": "aclImdb test", "fingerprint": "1344c512ed368156"}


def run(label, method, seed, step, rewards, *, train=None, skipped=None, prefdata=LOCAL):
    per_sample = [{"prompt_id": f"p{i // 3}", "index": i % 3, "reward": r, "kl": 0.1 * i} for i, r in enumerate(rewards)]
    return {"row_id": f"imdb/tiny/{label}", "task": "imdb", "model": "tiny", "method": method, "label": label,
            "hparams": {"beta": 0.5} if method == "dpo" else {}, "seed": seed, "step": step,
            "run_key": f"{label}{seed}{step}", "data_sources": {"prefdata": prefdata, "generate": BUILTIN},
            "scores": {"metrics": {"reward": sum(rewards) / len(rewards), "kl": 0.1}, "per_sample": per_sample,
                       "directions": {"reward": True, "kl": False}, "task_record": {"data_source": BUILTIN}},
            **({"train": train} if train else {}), **({"skipped_records": skipped} if skipped else {})}


def board():
    rewards = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # 2 prompts x 3 samples
    train = {"steps": 14, "hparams": {"beta": 0.5, "label_smoothing": 0.0}}
    runs = [run("reference", "reference", 0, None, rewards),
            run("dpo(beta=0.5)", "dpo", 0, 7, rewards, train=train, skipped={"prefdata": 3, "generate": 1}),
            run("dpo(beta=0.5)", "dpo", 0, 14, rewards, train=train, skipped={"prefdata": 3, "generate": 1})]
    return build_leaderboard("s", runs, manifest={}, config_hash="h", primary={"imdb": "reward"},
                             metric_info={"reward": {"higher_is_better": True}}, baseline_method=None, n_boot=50)


def test_rows_carry_data_budget_hyperparameters_and_skips():
    rows = {r["id"]: r for r in board()["rows"]}
    checkpoint = rows["imdb/tiny/dpo(beta=0.5)@7"]
    assert checkpoint["data_sources"] == {"eval": {k: BUILTIN[k] for k in ("kind", "location", "fingerprint")},
                                          "prefdata": {k: LOCAL[k] for k in ("kind", "location", "fingerprint")}}
    assert (checkpoint["prompts"], checkpoint["samples_per_prompt"]) == (2, 3)
    assert (checkpoint["step"], checkpoint["train_steps"]) == (7, 14)
    assert checkpoint["train_hparams"] == {"beta": 0.5, "label_smoothing": 0.0}
    assert checkpoint["skipped_records"] == {"prefdata": 3, "generate": 1}
    reference = rows["imdb/tiny/reference"]
    assert reference["train_steps"] is None and reference["skipped_records"] is None


def test_md_html_and_csv_show_them(tmp_path):
    written = report.write_all(board(), tmp_path)
    md = written["md"].read_text()
    assert ("| imdb | tiny | dpo(beta=0.5) | 7 | builtin imdb_openings.txt #ce50de38; local imdb #1344c512 | 2 x 3 | "
            "14 (checkpoint 7) | beta=0.5, label_smoothing=0.0 | prefdata 3, generate 1 |") in md
    assert "| imdb | tiny | dpo(beta=0.5) | 14 | builtin imdb_openings.txt #ce50de38; local imdb #1344c512 | 2 x 3 | 14 |" in md
    assert "| imdb | tiny | reference |  | builtin imdb_openings.txt #ce50de38; local imdb #1344c512 | 2 x 3 | - | - |  |" in md
    html = written["html"].read_text()
    assert "<table class='board facts' id='facts'>" in html and "<td>14 (checkpoint 7)</td>" in html
    assert "<td>prefdata 3, generate 1</td>" in html
    with open(written["csv"]) as handle:
        table = {(r["label"], r["step"]): r for r in csv.DictReader(handle)}
    line = table[("dpo(beta=0.5)", "7")]
    assert (line["data_source"], line["train_data_source"]) == ("builtin imdb_openings.txt #ce50de38",
                                                               "local imdb #1344c512")
    assert (line["prompts"], line["samples_per_prompt"], line["train_steps"]) == ("2", "3", "14")
    assert line["skipped_records"] == "prefdata=3;generate=1"


def test_committed_records_without_these_fields_rebuild_with_them(tmp_path):
    """Records written before runs kept their training's steps and hyperparameters: the suite's
    configuration fills them in; the json keeps every field it had (fields are only added)."""
    folder = tmp_path / "smoke"
    shutil.copytree(REPO / "results" / "smoke", folder)
    before = json.loads((folder / "leaderboard.json").read_text())
    rebuilt, _ = rebuild_from_records(folder)
    rows = {r["id"]: r for r in rebuilt["rows"]}
    for old in before["rows"]:
        assert {k: v for k, v in rows[old["id"]].items() if k in old} == old
    sparsepo = next(r for r in rebuilt["rows"] if r["label"] == "sparsepo")
    assert sparsepo["train_steps"] == 2 and sparsepo["train_hparams"] == {"beta": 0.1, "mode": "common", "l1_u": 0.0,
                                                                           "l1_d": 0.0}
    assert sparsepo["data_sources"]["eval"]["kind"] == "builtin" and (sparsepo["prompts"], sparsepo["samples_per_prompt"]) == (8, 2)


@pytest.mark.slow
def test_a_run_records_its_training_and_the_rebuild_equals_the_board(tmp_path):
    from bench.config import load_suite
    from bench.runner import run_suite

    suite = load_suite("smoke", ["methods=dpo", "methods.dpo.beta=0.1", "train.steps=2", "train.eval_at_steps=[1]",
                                 f"work_dir={tmp_path / 'work'}", f"results_dir={tmp_path / 'results'}"])
    board = run_suite(suite, progress=lambda line: None)["board"]
    rows = {r["id"]: r for r in board["rows"]}
    assert (rows["imdb/tiny/dpo@1"]["train_steps"], rows["imdb/tiny/dpo@2"]["train_steps"]) == (2, 2)
    assert rows["imdb/tiny/dpo@2"]["train_hparams"] == {"beta": 0.1}
    assert rows["imdb/tiny/dpo@2"]["data_sources"]["prefdata"]["fingerprint"] == "ce50de38ba5f5c68"
    record = json.loads((tmp_path / "results" / "runs" / "imdb__tiny__dpo__s0__step1.json").read_text())
    assert record["train"] == {"steps": 2, "hparams": {"beta": 0.1}}
    rebuilt, _ = rebuild_from_records(tmp_path / "results")
    assert rebuilt["rows"] == board["rows"]
    assert "| imdb | tiny | dpo | 1 | builtin imdb_openings.txt #ce50de38 | 8 x 2 | 2 (checkpoint 1) | beta=0.1 |  |" \
        in (tmp_path / "results" / "leaderboard.md").read_text()
