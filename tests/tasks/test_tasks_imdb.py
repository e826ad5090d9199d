"""IMDB task: prompts from the real aclImdb files, built-in openings, the VADER scorer's accuracy,
and scoring real samples from tiny models end to end."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

import tasks
from tasks.base import shared_data_dir
from tests.fixtures.tasks_support import tiny_samples

IMDB_DIR = shared_data_dir() / "imdb"
needs_imdb = pytest.mark.skipif(not (IMDB_DIR / "aclImdb_test.tar.gz").exists(),
                                reason=f"IMDB test files not found under {IMDB_DIR} (set POBENCH_SHARED_DATA)")


@needs_imdb
@pytest.mark.slow
def test_vader_accuracy_on_the_1000_review_sample(capsys):
    task = tasks.get("imdb", data_dir=shared_data_dir(), judge="sentiment:vader")
    result = task.judge_accuracy(limit=1000)
    with capsys.disabled():  # printed in every CI log, not only on failure
        print(f"\nVADER accuracy on {result['n']} labelled IMDB reviews ({result['reviews']}): "
              f"{result['accuracy']:.3f} [95% CI {result['ci95_low']:.3f}, {result['ci95_high']:.3f}]")
    assert result["n"] == 1000
    assert result["reviews"].endswith("imdb_test_sample1000.derived.jsonl")
    assert result["accuracy"] > 0.65


@needs_imdb
@pytest.mark.slow
def test_prompts_are_short_prefixes_of_real_reviews_and_splits_are_disjoint():
    task = tasks.get("imdb", data_dir=shared_data_dir())
    evals, trains = task.eval_prompts(limit=200), task.train_prompts(limit=200)
    assert len(evals) == len(trains) == 200
    assert all(2 <= len(p.text.split()) <= 8 for p in evals + trains)
    assert not {p.id for p in evals} & {p.id for p in trains}
    assert all(p.id.startswith("test/") and p.meta["label"] in (0, 1) for p in evals)
    assert task.eval_prompts(limit=200) == evals  # deterministic
    assert tasks.get("imdb", data_dir=shared_data_dir(), seed=1).eval_prompts(limit=20) != evals[:20]
    used = task.record()["data_source"]
    assert used["kind"] == "local" and used["fingerprint"] == "ddeb8f9b9714317b"  # sha256 prefix of the tarball
    sft = task.sft_data(limit=3)
    assert len(sft) == 3 and all(len(e.completion.split()) <= 64 for e in sft)
    # every score carries the judge's accuracy on the labelled sample
    prompt = evals[0]
    details = tasks.get("imdb", data_dir=shared_data_dir(), judge="sentiment:vader",
                        judge_accuracy_reviews=100).score([tasks.Sample.from_prompt(prompt, " great")]).details
    assert details["judge_accuracy"]["n"] == 100 and 0.5 < details["judge_accuracy"]["accuracy"] <= 1.0


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class CharacterTokenizer:
    """One token per character: the first k tokens of a text are its first k characters."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, clean_up_tokenization_spaces=False):
        return "".join(chr(i) for i in ids)


def test_token_prefix_takes_the_drawn_number_of_tokens():
    from tasks.imdb import review_token_prefix

    # k is drawn uniformly in [2, 8] from (seed, key): for seed 0 and key "r1" it is
    k = random.Random("0:r1").randint(2, 8)
    text = "Loud, ugly and incoherent."
    assert review_token_prefix(text, "r1", 0, CharacterTokenizer()) == text[:k]
    # a review shorter than k tokens is the whole review
    assert review_token_prefix("Hi", "r1", 0, CharacterTokenizer(), min_tokens=5, max_tokens=5) == "Hi"


def test_token_prefixes_of_gpt2_may_end_inside_a_word_and_sft_continues_there():
    task = tasks.get("imdb", data_dir=FIXTURES, prefix_unit="tokens", judge="sentiment:vader")
    prompts = {p.id: p.text for p in task.train_prompts()}
    # GPT-2 BPE of the review: 'L' 'oud' ',' ' ugly' ' and' ' inco' 'herent' ...; k = 6 for (seed 0, this id)
    assert random.Random("0:train/neg/5_1").randint(2, 8) == 6
    assert prompts["train/neg/5_1"] == "Loud, ugly and inco"
    # 'Qu' 'iet' ' and' ...; k = 2
    assert prompts["train/pos/3_7"] == "Quiet"
    sft = {e.id: e for e in task.sft_data()}
    assert sft["train/neg/5_1"].completion.startswith("herent. The action scenes")
    assert sft["train/pos/3_7"].completion.startswith(" and patient, this documentary")
    # the default is unchanged: prefixes of 2-8 whole words
    words = tasks.get("imdb", data_dir=FIXTURES, judge="sentiment:vader").train_prompts()
    assert all(2 <= len(p.text.split()) <= 8 for p in words)
    assert {p.text for p in words} != set(prompts.values())
    with pytest.raises(tasks.TaskError, match="prefix_unit must be one of"):
        tasks.get("imdb", prefix_unit="characters")


def test_builtin_openings_work_offline_without_data(tmp_path, monkeypatch):
    monkeypatch.setenv("POBENCH_SHARED_DATA", str(tmp_path))  # nothing there
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = tasks.get("imdb")
    assert task.resolve_source() == "builtin"
    evals, trains = task.eval_prompts(), task.train_prompts()
    assert len(trains) >= 256 and len(evals) >= 256
    assert (len(trains), len(evals)) == (461, 469)  # the counts tasks/data/README.md and the source give
    assert all(2 <= len(p.text.split()) <= 12 for p in evals + trains)
    assert all(p.id.startswith("opening/eval/") for p in evals)
    assert all(p.id.startswith("opening/train/") for p in trains)
    assert len({p.id for p in evals + trains}) == len(evals) + len(trains)
    # disjoint by text, case-insensitively, and no opening of one split begins another's
    key = lambda p: p.text.rstrip(" ,:;.?!").lower()  # noqa: E731
    eval_keys, train_keys = [key(p) for p in evals], [key(p) for p in trains]
    assert len(set(eval_keys + train_keys)) == len(eval_keys) + len(train_keys)
    prefixed = [(a, b) for a in eval_keys for b in train_keys if a.startswith(b) or b.startswith(a)]
    assert not prefixed
    # deterministic across calls and task objects; limit takes the first openings of the same order
    again = tasks.get("imdb")
    assert again.eval_prompts() == evals and again.train_prompts() == trains
    assert task.eval_prompts(limit=5) == evals[:5] and task.train_prompts(limit=300) == trains[:300]
    assert tasks.get("imdb", seed=3).eval_prompts(limit=10) == evals[:10]  # the file, not the seed, orders them
    assert task.record()["data_source"]["kind"] == "builtin"
    with pytest.raises(tasks.TaskError, match="no SFT data"):
        task.sft_data()


def test_openings_file_format_errors_name_the_line(tmp_path):
    from tasks.imdb import read_openings
    good = tmp_path / "good.txt"
    good.write_text("# comment\n[train]\nThe first scene\n\n[eval]\nAs a fan of the books,\n")
    assert read_openings(str(good)) == {"train": ("The first scene",), "eval": ("As a fan of the books,",)}
    cases = {"The first scene\n": r"bad0\.txt:1: opening before any",
             "[test]\nThe first scene\n": r"bad1\.txt:1: unknown section",
             "[train]\nThe first scene\n[eval]\nthe first scene,\n":
                 r"bad2\.txt:4: opening 'the first scene,' repeats line 2"}
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.txt"
        path.write_text(text)
        with pytest.raises(tasks.DataError, match=message):
            read_openings(str(path))


def test_scores_real_samples_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("POBENCH_SHARED_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = tasks.get("imdb", judge="sentiment:vader")
    samples = tiny_samples(task.eval_prompts(limit=3), n=2, max_new_tokens=6)
    scores = task.score(samples)
    assert set(scores.metrics) == {"reward", "kl", "distinct_1", "distinct_2", "token_entropy"}
    expected_kl = sum(sum(a - b for a, b in zip(s.logprobs, s.ref_logprobs)) for s in samples) / len(samples)
    assert scores.metrics["kl"] == pytest.approx(expected_kl)
    expected_entropy = sum(sum(s.entropies) for s in samples) / sum(len(s.entropies) for s in samples)
    assert scores.metrics["token_entropy"] == pytest.approx(expected_entropy)
    assert scores.details["token_entropy_estimator"] == "exact"
    assert -1.0 <= scores.metrics["reward"] <= 1.0
    assert [r["prompt_id"] for r in scores.per_sample] == [s.prompt_id for s in samples]
    assert scores.details["judge"]["version"].startswith("vader-")
    assert "unavailable" in scores.details["judge_accuracy"]  # no labelled reviews offline in this test
    # generated preferences from the same samples: best vs worst by VADER, margin 0 keeps any gap
    pairs = task.pairs_from_samples(samples, margin=0.0)
    rewards = task.reward(samples)
    for pair in pairs:
        assert pair.meta["score_chosen"] > pair.meta["score_rejected"]
        assert pair.meta["score_chosen"] == max(r for s, r in zip(samples, rewards) if s.prompt_id == pair.id)


def test_missing_logprobs_are_reported_not_invented(tmp_path, monkeypatch):
    monkeypatch.setenv("POBENCH_SHARED_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = tasks.get("imdb", judge="sentiment:vader")
    prompt = task.eval_prompts(limit=1)[0]
    scores = task.score([tasks.Sample.from_prompt(prompt, " a wonderful, moving film")])
    assert "kl" not in scores.metrics and "token_entropy" not in scores.metrics
    assert set(scores.details["missing"]) == {"kl", "token_entropy"}
    assert scores.metrics["reward"] > 0.5


def test_extracted_aclimdb_folder_with_both_splits(tmp_path):
    reviews = {"test/pos/1_9.txt": "An absolute joy of a film, I smiled throughout.",
               "test/neg/2_1.txt": "Dull, slow and far too long for its thin story.",
               "train/pos/3_10.txt": "Brilliant performances lift this gentle drama.",
               "train/neg/4_2.txt": "I walked out after an hour of this mess."}
    for rel, text in reviews.items():
        path = tmp_path / "imdb" / "aclImdb" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    task = tasks.get("imdb", data_dir=tmp_path)
    assert {p.id for p in task.eval_prompts()} == {"test/pos/1_9", "test/neg/2_1"}
    assert {p.id for p in task.train_prompts()} == {"train/pos/3_10", "train/neg/4_2"}
    assert "test + train" in task.record()["data_source"]["detail"]
    by_id = {e.id: e for e in task.sft_data()}
    prompt = next(p for p in task.train_prompts() if p.id == "train/neg/4_2")
    assert prompt.text + by_id["train/neg/4_2"].completion == reviews["train/neg/4_2.txt"]
