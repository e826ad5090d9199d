"""The task contract and the task table: registry, source resolution, pairing, provenance."""
from __future__ import annotations

import math

import pytest

import tasks
from tasks.base import (DataSource, Metric, PairLogps, Sample, Sampling, SourceUsed, Task, TaskError,
                        pairs_from_scores)

EXPECTED = ["imdb", "hh", "tldr", "humaneval", "mbpp", "reasoning"]


def test_table_lists_the_six_tasks_in_order():
    assert tasks.available()[:6] == EXPECTED


@pytest.mark.parametrize("name", ["imdb", "hh", "tldr", "reasoning"])
def test_own_tasks_load_and_describe_themselves(name):
    cls = tasks.task_class(name)
    assert cls.name == name and cls.version and cls.description
    assert {s.kind for s in cls.sources} <= {"hub", "local", "builtin"}
    assert cls.sources[0].kind == "hub"  # the hub id researchers use comes first
    assert all(m.higher_is_better in (True, False, None) for m in cls.metrics)
    assert len({m.name for m in cls.metrics}) == len(cls.metrics)


def test_unknown_task_and_broken_module_name_themselves(monkeypatch):
    with pytest.raises(TaskError, match="unknown task 'nope'.*imdb"):
        tasks.get("nope")
    monkeypatch.setitem(tasks.TASK_TABLE, "broken", "tasks.does_not_exist:Broken")
    with pytest.raises(TaskError, match="'broken' could not be loaded from 'tasks.does_not_exist:Broken'"):
        tasks.task_class("broken")
    # the others still load: the table is lazy
    assert tasks.task_class("imdb").name == "imdb"


class _Toy(Task):
    name = "toy"
    version = "3"
    sources = (DataSource("hub", "org/toy"), DataSource("local", "toy/data.jsonl"), DataSource("builtin", "x"))
    metrics = (Metric("m", True, "a metric"),)
    options = {"margin": (0.5, "pair margin")}


def test_options_are_checked():
    assert _Toy().margin == 0.5
    assert _Toy(margin=0.1).margin == 0.1
    with pytest.raises(TaskError, match=r"unknown option\(s\) \['marginn'\]"):
        _Toy(marginn=1)
    with pytest.raises(TaskError, match="source must be"):
        _Toy(source="ftp")


def test_source_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("POBENCH_SHARED_DATA", str(tmp_path / "shared"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert _Toy().resolve_source() == "hub"  # online, no data dir
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _Toy().resolve_source() == "builtin"  # offline, shared folder lacks the file
    (tmp_path / "shared" / "toy").mkdir(parents=True)
    (tmp_path / "shared" / "toy" / "data.jsonl").write_text("{}\n")
    assert _Toy().resolve_source() == "local"  # offline, shared folder has it
    with pytest.raises(TaskError, match="does not hold toy/data.jsonl"):
        _Toy(data_dir=tmp_path / "elsewhere").resolve_source()
    with pytest.raises(TaskError, match="HF_HUB_OFFLINE"):
        _Toy(source="hub").resolve_source()
    assert _Toy(source="builtin").resolve_source() == "builtin"


def test_pairs_from_scores_best_vs_worst_over_margin():
    samples = [Sample("p", "P", "a", 0), Sample("p", "P", "b", 1), Sample("p", "P", "c", 2),
               Sample("q", "Q", "d", 0), Sample("q", "Q", "e", 1),
               Sample("r", "R", "f", 0)]
    scores = [0.1, 0.9, 0.5, 0.40, 0.45, 1.0]
    pairs = pairs_from_scores(samples, scores, margin=0.2, judge="j@1")
    # p: gap 0.8 > 0.2 -> (b, a); q: gap 0.05 -> dropped; r: one sample -> dropped
    assert [(x.id, x.chosen, x.rejected) for x in pairs] == [("p", "b", "a")]
    assert pairs[0].meta == {"score_chosen": 0.9, "score_rejected": 0.1, "judge": "j@1", "n_candidates": 3}
    assert len(pairs_from_scores(samples, scores, margin=0.0)) == 2
    with pytest.raises(TaskError, match="6 samples but 2 scores"):
        pairs_from_scores(samples, scores[:2])


def test_all_pairs_of_four_samples_with_a_tie_by_hand():
    # K = 4 completions of one prompt scored 0.2, 0.7, 0.2, 0.9: sorted best first (ties by sample order)
    # d (0.9), b (0.7), a (0.2), c (0.2); the K(K-1)/2 = 6 pairs in that order are (d,b) (d,a) (d,c) (b,a)
    # (b,c) (a,c), and the tie (a,c) is dropped: 5 pairs, the higher-scored response chosen
    samples = [Sample("p", "P", "a", 0), Sample("p", "P", "b", 1), Sample("p", "P", "c", 2), Sample("p", "P", "d", 3),
               Sample("q", "Q", "e", 0)]
    scores = [0.2, 0.7, 0.2, 0.9, 0.5]
    pairs = pairs_from_scores(samples, scores, margin=0.0, judge="j@1", pairs="all")
    assert [(x.chosen, x.rejected) for x in pairs] == [("d", "b"), ("d", "a"), ("d", "c"), ("b", "a"), ("b", "c")]
    assert [x.id for x in pairs] == ["p/3>1", "p/3>0", "p/3>2", "p/1>0", "p/1>2"]
    assert pairs[0].meta == {"score_chosen": 0.9, "score_rejected": 0.7, "judge": "j@1", "n_candidates": 4,
                             "pairing": "all"}
    # a margin drops the pairs whose gap is not above it: 0.25 drops (d,b), gap 0.2
    assert [(x.chosen, x.rejected) for x in pairs_from_scores(samples, scores, margin=0.25, pairs="all")] == [
        ("d", "a"), ("d", "c"), ("b", "a"), ("b", "c")]
    # best_worst on the same samples: one pair per prompt, d vs c (of the tied worst, the later sample)
    assert [(x.chosen, x.rejected) for x in pairs_from_scores(samples, scores)] == [("d", "c")]
    with pytest.raises(TaskError, match="pairs='some' is not one of"):
        pairs_from_scores(samples, scores, pairs="some")


def test_sequence_kl_and_implicit_margin():
    s = Sample("p", "P", "x", logprobs=[-1.0, -2.0], ref_logprobs=[-1.5, -1.0])
    assert s.sequence_kl() == pytest.approx(-0.5)  # (-1 + 1.5) + (-2 + 1)
    assert Sample("p", "P", "x", kl=3.0).sequence_kl() == 3.0
    assert Sample("p", "P", "x").sequence_kl() is None
    with pytest.raises(TaskError, match="different lengths"):
        Sample("p", "P", "x", logprobs=[-1.0], ref_logprobs=[]).sequence_kl()
    pair = PairLogps("a", policy_chosen=-10, policy_rejected=-12, ref_chosen=-11, ref_rejected=-11)
    assert pair.implicit_margin == pytest.approx(1 - (-1))


def test_record_carries_every_source_read():
    task = _Toy()
    task._note_source(SourceUsed("local", "/d/a.jsonl", "split=train", "aa"))
    task._note_source(SourceUsed("local", "/d/a.jsonl", "split=train", "aa"))  # same file twice: once
    task._note_source(SourceUsed("local", "/d/b.jsonl", "split=test", "bb"))
    rec = task.record()
    assert rec["task"] == "toy" and rec["task_version"] == "3" and rec["options"] == {"margin": 0.5}
    assert [s["location"] for s in rec["data_sources"]] == ["/d/a.jsonl", "/d/b.jsonl"]
    assert rec["data_source"]["location"] == "/d/a.jsonl + /d/b.jsonl"


def test_sampling_replace_keeps_defaults():
    s = Sampling(max_new_tokens=32, stop=("\n",))
    t = s.replace(n=4)
    assert (t.n, t.max_new_tokens, t.stop, s.n) == (4, 32, ("\n",), 1)
    assert not math.isnan(t.temperature)


def test_entry_point_plugins_join_the_table(monkeypatch):
    monkeypatch.setattr(tasks, "_plugins", lambda: {"imdb_again": "tasks.imdb:IMDB", "bad": "tasks.base:Sample"})
    assert tasks.available()[-2:] == ["imdb_again", "bad"]
    assert tasks.task_class("imdb_again").name == "imdb"
    with pytest.raises(TaskError, match="'tasks.base:Sample' is not a tasks.Task subclass"):
        tasks.task_class("bad")


def test_judge_from_string_mapping_or_object():
    from tasks import judges

    assert tasks.get("imdb", judge="sentiment:vader").judge.model == "vader"
    mapped = tasks.get("imdb", judge={"spec": "sentiment:vader", "include_prompt": False}).judge
    assert mapped.model == "vader" and mapped.include_prompt is False
    obj = judges.SentimentJudge("vader")
    assert tasks.get("imdb", judge=obj).judge is obj
    with pytest.raises(TaskError, match="needs a 'spec' key"):
        tasks.get("imdb", judge={"model": "x"}).judge
    with pytest.raises(TaskError, match="bad judge options"):
        tasks.get("imdb", judge={"spec": "sentiment:vader", "colour": 1}).judge


def test_reward_needs_a_pointwise_judge():
    task = tasks.get("tldr", judge="embedding")
    with pytest.raises(TaskError, match="gives no pointwise score.*pairwise_ranking"):
        task.reward([Sample("p", "P", "x")])
