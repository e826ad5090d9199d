"""`pobench plan`'s work estimate and stage listing: epoch-based training, `prompts: null`, and the
trainings a preparation step adds told apart from the cell's own."""
from __future__ import annotations

import math

import pytest

from bench.config import validate
from bench.plan import build_plan, describe_plan, estimate_work

BUILTIN_IMDB = {"imdb": {"source": "builtin", "judge": "sentiment:vader"}}


def suite(tmp_path, **sections):
    return validate({"name": "t", "methods": {"dpo": {}, "ipo": {}}, "task_options": BUILTIN_IMDB,
                     "work_dir": str(tmp_path / "work"), **sections})


def test_epoch_based_training_counts_epochs_times_pairs_over_the_batch(tmp_path):
    plan = build_plan(suite(tmp_path, train={"steps": 0, "epochs": 2.5, "batch_size": 4, "grad_accum": 2},
                            prefdata={"prompts": 12}))
    # at most one pair per preference prompt: ceil(2.5 x 12 / (4 x 2)) = 4 optimizer steps per run
    assert estimate_work(plan)["train_steps"] == 2 * math.ceil(2.5 * 12 / 8)


def test_prompts_null_uses_the_tasks_prompt_count(tmp_path):
    plan = build_plan(suite(tmp_path, prefdata={"prompts": None, "samples_per_prompt": 2},
                            generation={"prompts": None, "samples_per_prompt": 3}, train={"steps": 0, "epochs": 1,
                                                                                         "batch_size": 461}))
    work = estimate_work(plan)
    # the built-in openings: 461 train / 469 eval; reference + 2 methods sampled, 2 policies teacher-forced
    assert work == {"sampled_sequences": 461 * 2 + 3 * 469 * 3, "train_steps": 2, "kl_sequences": 2 * 469 * 3}


def test_prompts_null_on_a_task_that_cannot_count_cheaply_is_unknown_not_zero(tmp_path, monkeypatch, capsys):
    (tmp_path / "data" / "imdb").mkdir(parents=True)
    (tmp_path / "data" / "imdb" / "aclImdb_test.tar.gz").write_bytes(b"not read when planning")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    options = {"imdb": {"source": "local", "data_dir": str(tmp_path / "data"), "judge": "sentiment:vader"}}
    plan = build_plan(validate({"name": "t", "methods": {"dpo": {}}, "task_options": options,
                                "work_dir": str(tmp_path / "work"), "generation": {"prompts": None},
                                "prefdata": {"prompts": None}, "train": {"steps": 0, "epochs": 1}}))
    work = describe_plan(plan)["work_left"]
    assert work["sampled_sequences"] is None and work["train_steps"] is None and work["kl_sequences"] is None

    from bench.cli import main

    yaml = tmp_path / "t.yaml"
    yaml.write_text("name: t\nmethods: {dpo: {}}\ngeneration: {prompts: null}\ntask_options: {imdb: {source: local, "
                    f"data_dir: '{tmp_path / 'data'}', judge: 'sentiment:vader'}}}}\n")
    assert main(["plan", str(yaml), "--work-dir", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert "sampled_sequences unknown" in out and "kl_sequences unknown" in out
    assert "data imdb: local imdb #" in out


@pytest.mark.parametrize("tis_only", [False, True])
def test_tis_dpo_lists_its_contrastive_trainings_by_role(tmp_path, tis_only):
    methods = {"tis_dpo": {}} if tis_only else {"dpo": {}, "tis_dpo": {}}
    plan = build_plan(suite(tmp_path, methods=methods))
    (row,) = [c for c in describe_plan(plan)["cells"] if c["label"] == "tis_dpo"]
    stages = row["stages"].split()
    assert [s.split(":")[0] for s in stages] == ["prefdata", "train(pi_plus)", "train(pi_minus)", "prep", "train",
                                                 "generate", "score"]
    if not tis_only:  # the suite's own DPO row lists its training plainly (it is TIS-DPO's pi_plus too)
        (dpo,) = [c for c in describe_plan(plan)["cells"] if c["label"] == "dpo"]
        assert [s.split(":")[0] for s in dpo["stages"].split()] == ["prefdata", "train", "generate", "score"]
