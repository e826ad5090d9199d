"""The data a task resolves to is part of the key of every stage that reads it: new or changed data
recomputes those stages (and what is built on them) instead of reusing results of other material."""
from __future__ import annotations

import pytest

from bench.config import validate
from bench.plan import build_plan

DATA_READING = ("prefdata", "train", "generate", "score")


def suite(**task_options):
    return validate({"name": "t", "methods": {"dpo": {}}, "eval_tasks": ["reasoning"],
                     "task_options": {"imdb": {"judge": "sentiment:vader", **task_options}}})


def keys(plan):
    return {(n.stage, n.label): n.key for n in plan.nodes}


def imdb_folder(root, content: bytes):
    (root / "imdb").mkdir(parents=True)
    (root / "imdb" / "aclImdb_test.tar.gz").write_bytes(content)
    return root


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, and a shared data folder that starts empty."""
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("POBENCH_SHARED_DATA", str(shared))
    return shared


def test_two_local_data_files_give_different_keys_to_the_stages_that_read_them(offline, tmp_path):
    folder = imdb_folder(tmp_path / "data", b"reviews one")
    a = build_plan(suite(source="local", data_dir=str(folder)))
    (folder / "imdb" / "aclImdb_test.tar.gz").write_bytes(b"reviews two")  # same place, same options, new data
    b = build_plan(suite(source="local", data_dir=str(folder)))
    ka, kb = keys(a), keys(b)
    assert ka.keys() == kb.keys()
    for (stage, label), key in ka.items():
        if stage in DATA_READING or label.endswith("dpo s0"):
            assert kb[(stage, label)] != key, (stage, label)
    # the reference's reasoning evaluation reads no imdb data and depends on nothing that does
    assert kb[("evaluate", "evaluate reasoning reference")] == ka[("evaluate", "evaluate reasoning reference")]
    # ... while the trained policy's evaluation is downstream of the new data
    assert kb[("evaluate", "evaluate reasoning dpo s0")] != ka[("evaluate", "evaluate reasoning dpo s0")]
    (prefdata,) = [n for n in a.nodes if n.stage == "prefdata"]
    assert prefdata.params.task.data["kind"] == "local" and len(prefdata.params.task.data["fingerprint"]) == 16


def test_identical_data_in_another_folder_keeps_the_keys(offline, tmp_path):
    """The key follows the content, not where it lies (a fresh copy on another machine reuses nothing
    it should not, and recomputes nothing it need not)."""
    a = build_plan(suite(source="local", data_dir=str(imdb_folder(tmp_path / "a", b"same reviews"))))
    b = build_plan(suite(source="local", data_dir=str(imdb_folder(tmp_path / "b", b"same reviews"))))
    assert keys(a) == keys(b)


def test_shared_data_appearing_recomputes_what_was_built_on_builtin_material(offline):
    before = build_plan(suite())  # offline, nothing shared: imdb falls back to its built-in openings
    (prefdata,) = [n for n in before.nodes if n.stage == "prefdata"]
    assert prefdata.params.task.data == {"kind": "builtin", "location": "tasks/data/imdb_openings.txt",
                                         "fingerprint": "ce50de38ba5f5c68"}  # what the task records when it reads it
    imdb_folder(offline, b"the real reviews")
    after = build_plan(suite())
    kb, ka = keys(before), keys(after)
    for stage in DATA_READING:
        changed = [label for (s, label), key in kb.items() if s == stage and ka[(s, label)] != key]
        assert changed and len(changed) == sum(s == stage for s, _ in kb), stage
    pinned = build_plan(suite(source="builtin"))  # a suite that pins the built-in material is unaffected
    assert keys(pinned) == kb


def test_a_task_without_any_source_still_plans(offline):
    """`pobench plan` shows the grid; the stage that reads the data fails with the task's own message."""
    plan = build_plan(suite(source="local"))  # no imdb/ anywhere
    (prefdata,) = [n for n in plan.nodes if n.stage == "prefdata"]
    assert prefdata.params.task.data == {"kind": "unavailable"}


@pytest.mark.parametrize("name,split", [("imdb", "train"), ("imdb", "eval")])
def test_the_planned_source_and_prompt_count_are_what_loading_finds(name, split):
    import tasks

    task = tasks.get(name, source="builtin")
    planned, count = task.planned_source(), task.prompt_count(split)
    prompts = task.train_prompts() if split == "train" else task.eval_prompts()
    assert count == len(prompts)
    used = task.source_used.as_dict()
    assert (planned["kind"], planned["fingerprint"]) == (used["kind"], used["fingerprint"])
    assert used["location"].endswith(planned["location"])


def test_a_builtin_file_inside_another_package_is_fingerprinted():
    import tasks

    task = tasks.get("humaneval", source="builtin")
    planned = task.planned_source()
    task.problems()
    assert planned["fingerprint"] == task.source_used.fingerprint != ""


def test_a_run_on_builtin_material_says_so_and_why(offline):
    from bench.runner import builtin_data_note

    fallback = builtin_data_note(build_plan(suite()))
    assert fallback == (f"[pobench] built-in material, not the task's dataset: imdb (tasks/data/imdb_openings.txt; "
                        f"fallback: offline and no local files under {offline}; point POBENCH_SHARED_DATA or "
                        "task_options.imdb.data_dir at them)")
    pinned = builtin_data_note(build_plan(suite(source="builtin")))
    assert pinned.endswith("imdb (tasks/data/imdb_openings.txt; task_options.imdb.source: builtin)")
    imdb_folder(offline, b"the real reviews")
    assert builtin_data_note(build_plan(suite())) is None
