"""Suite fields for the HH and code suites: ``transfer_tasks`` (the policies of the training task also sampled
and scored on other tasks, as rows of their own) and per-method ``seeds`` (a subset of the suite's)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import ConfigError, load_suite, validate
from bench.plan import build_plan

REPO = Path(__file__).resolve().parents[2]
BASE = {"name": "t", "models": [{"id": "tiny"}], "tasks": ["mbpp"], "transfer_tasks": ["humaneval"],
        "methods": {"dpo": {}, "sparsepo": {"seeds": [1]}}, "seeds": [0, 1],
        "task_options": {"mbpp": {"source": "local", "data_dir": "/nonexistent"}, "humaneval": {"source": "builtin"}}}


def test_transfer_cells_reuse_the_training_tasks_policies_and_method_seeds_subset_the_suites():
    plan = build_plan(validate(BASE))
    cells = [(c.task, c.label, c.seed) for c in plan.cells]
    assert cells == [("mbpp", "reference", 0), ("humaneval", "reference", 0), ("mbpp", "reference", 1),
                     ("humaneval", "reference", 1), ("mbpp", "dpo", 0), ("humaneval", "dpo", 0),
                     ("mbpp", "dpo", 1), ("humaneval", "dpo", 1), ("mbpp", "sparsepo", 1), ("humaneval", "sparsepo", 1)]
    by = {(c.task, c.label, c.seed): c for c in plan.cells}
    # one training per (method, seed), shared by its two rows; each row samples and scores its own task
    assert by[("humaneval", "dpo", 0)].train is by[("mbpp", "dpo", 0)].train
    assert len(plan.by_stage("train")) == 3 and len(plan.by_stage("prefdata")) == 1
    assert by[("humaneval", "dpo", 0)].score.params.task.name == "humaneval"
    assert by[("humaneval", "dpo", 0)].score.deps["samples"].params.task.name == "humaneval"
    assert by[("humaneval", "dpo", 0)].row_id == "humaneval/tiny/dpo"
    # a suite without the new fields keeps its hash (the fields are left out of dumps at their defaults)
    plain = {**{k: v for k, v in BASE.items() if k != "transfer_tasks"}, "methods": {"dpo": {}},
             "task_options": {"mbpp": BASE["task_options"]["mbpp"]}}
    assert "transfer_tasks" not in validate(plain).to_dict()


@pytest.mark.parametrize("change, message", [
    ({"tasks": ["mbpp", "imdb"]}, "transfer_tasks: the policies of one training task are scored on them; tasks has 2"),
    ({"transfer_tasks": ["humaneval", "humaneval"]}, "transfer_tasks[1]: 'humaneval' is listed twice"),
    ({"transfer_tasks": ["mbpp"]}, "transfer_tasks[0]: 'mbpp' is the training task"),
    ({"transfer_tasks": ["reasoning"]}, "transfer_tasks[0]: task 'reasoning' evaluates checkpoints"),
    ({"transfer_tasks": ["nope"]}, "transfer_tasks[0]: unknown task 'nope'"),
    ({"methods": {"dpo": {"seeds": [3]}}}, "methods.dpo.seeds: [3] not among the suite's seeds [0, 1]"),
    ({"methods": {"dpo": {"seeds": []}}}, "methods.dpo.seeds: give a list of integer seeds"),
])
def test_bad_fields_are_named(change, message):
    with pytest.raises(ConfigError) as err:
        validate({**BASE, **change})
    assert message in str(err.value)


@pytest.mark.parametrize("name", ["hh", "code"])
def test_the_shipped_suites_load_and_plan(name):
    suite = load_suite(REPO / "configs" / f"{name}.yaml")
    plan = build_plan(suite)
    seeds = {(c.task, c.label): set() for c in plan.cells}
    for c in plan.cells:
        seeds[(c.task, c.label)].add(c.seed)
    if name == "hh":
        assert {k[1]: sorted(v) for k, v in seeds.items()} == {
            "reference": [0, 1, 2], "dpo": [0, 1, 2], "tdpo1": [0, 1, 2], "tdpo2": [0, 1, 2], "sparsepo": [0],
            "sparsepo_mapo": [0], "tis_dpo": [0], "bcr": [0]}
        assert {(p.method, p.metric) for p in suite.paper_reference} == {
            ("dpo (paper)", "alignment_accuracy"), ("dpo (paper)", "token_entropy"),
            ("tdpo2 (paper)", "alignment_accuracy"), ("tdpo2 (paper)", "token_entropy")}
    else:
        assert set(seeds) == {(t, m) for t in ("mbpp", "humaneval") for m in ("reference", "dpo", "sparsepo")}
        assert all(sorted(v) == [0, 1] for v in seeds.values())
