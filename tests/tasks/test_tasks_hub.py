"""The hub code paths (the default for online users), with ``datasets.load_dataset`` replaced by a
recorder returning rows in each dataset's published schema: checks the ids, splits and fields asked
for and that the source is recorded as the hub. No network is used."""
from __future__ import annotations

import datasets
import pytest

import tasks

HH_ROW = {"chosen": "\n\nHuman: hi\n\nAssistant: hello there", "rejected": "\n\nHuman: hi\n\nAssistant: no"}
TLDR_PROMPT = "SUBREDDIT: r/test\n\nTITLE: t\n\nPOST: a post\n\nTL;DR:"
ROWS = {
    "stanfordnlp/imdb": [{"text": "This movie was a delight from start to finish.<br />Go see it.", "label": 1},
                         {"text": "Terrible acting and a plot that goes nowhere at all.", "label": 0}],
    "Anthropic/hh-rlhf": [HH_ROW, HH_ROW],
    "trl-lib/tldr": [{"prompt": TLDR_PROMPT, "completion": " a summary"}],
    "trl-lib/tldr-preference": [{"prompt": TLDR_PROMPT, "chosen": " good", "rejected": " bad"}],
}


@pytest.fixture
def hub(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    calls = []

    def fake_load_dataset(path, name=None, split=None, data_dir=None, **kwargs):
        calls.append((path, split, data_dir))
        return datasets.Dataset.from_list(ROWS[path])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_imdb_from_the_hub(hub):
    task = tasks.get("imdb", judge="sentiment:vader")
    assert task.resolve_source() == "hub"
    prompts = task.eval_prompts()
    assert [p.id for p in sorted(prompts, key=lambda p: p.id)] == ["test/0", "test/1"]
    assert all(2 <= len(p.text.split()) <= 8 for p in prompts)
    sft = task.sft_data()
    assert all("<br" not in e.completion for e in sft)
    assert ("stanfordnlp/imdb", "test", None) in hub and ("stanfordnlp/imdb", "train", None) in hub
    assert len(hub) == 2  # each split loaded once
    assert task.record()["data_source"]["kind"] == "hub"
    accuracy = task.judge_accuracy(limit=2)
    assert accuracy["n"] == 2 and accuracy["accuracy"] == 1.0


def test_hh_from_the_hub_with_a_subset(hub):
    task = tasks.get("hh", subset="harmless-base")
    pairs = task.preference_data()
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("\n\nHuman: hi\n\nAssistant:", " hello there", " no")] * 2
    assert task.eval_prompts()[0].reference == " hello there"
    assert hub == [("Anthropic/hh-rlhf", "train", "harmless-base"), ("Anthropic/hh-rlhf", "test", "harmless-base")]
    assert task.record()["data_sources"][0]["detail"] == "subset=harmless-base split=train"


def test_tldr_from_the_hub(hub):
    task = tasks.get("tldr")
    assert task.eval_prompts()[0].reference == " a summary"
    assert task.preference_data()[0].chosen == " good"
    assert task.eval_pairs()[0].rejected == " bad"
    assert hub == [("trl-lib/tldr", "test", None), ("trl-lib/tldr-preference", "train", None),
                   ("trl-lib/tldr-preference", "validation", None)]
