"""HH task: transcript parsing on real records, malformed-record reports, end-to-end scoring."""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest

import tasks
import tasks.hh as hh_module
from tasks.base import DataError, PairLogps, shared_data_dir
from tasks.hh import dialogue_turns, split_transcript
from tests.fixtures.tasks_support import tiny_samples

HH_FILE = shared_data_dir() / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
needs_hh = pytest.mark.skipif(not HH_FILE.exists(), reason=f"{HH_FILE} not found (set POBENCH_SHARED_DATA)")


@pytest.fixture(autouse=True)
def fresh_reports(monkeypatch):
    """A process warns about each malformed record once (not once per stage): each test starts afresh."""
    monkeypatch.setattr(hh_module, "_REPORTED", set())


def test_each_malformed_record_is_reported_once_per_process_and_counted_in_the_record(tmp_path):
    folder = tmp_path / "hh-rlhf" / "tiny"
    folder.mkdir(parents=True)
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    lines = [json.dumps(good), "{not json", json.dumps({"chosen": "x"}), json.dumps(good), json.dumps(good)]
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")  # > 200 bytes: not taken for a Git LFS pointer
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        records = []
        for _ in range(3):  # three stages, three task objects, one file
            task = tasks.get("hh", data_dir=tmp_path, eval_fraction=1.0)
            task.eval_prompts(), task.eval_pairs()
            records.append(task.record())
    assert [str(w.message).split(":")[0] for w in seen] == ["hh"]  # one warning, not one per stage or split
    assert "skipped 2 malformed record(s)" in str(seen[0].message) and "strict=true" in str(seen[0].message)
    assert all(r["skipped_records"] == 2 for r in records)  # every stage's record still counts them
    assert [(e["line"], e["reason"]) for e in records[0]["skipped_examples"]] == [
        (2, "invalid JSON (Expecting property name enclosed in double quotes at column 2)"),
        (3, "record needs fields 'chosen' and 'rejected'")]
    with pytest.raises(DataError, match=r"test.jsonl:2: invalid JSON .*; fix or delete this record, or set "
                                        r"task_options.hh.strict=false"):
        tasks.get("hh", data_dir=tmp_path, eval_fraction=1.0, strict=True).eval_pairs()


def _real_records(n: int) -> list[dict]:
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


@needs_hh
def test_split_transcript_on_real_records():
    first = _real_records(1)[0]
    prompt, chosen, rejected = split_transcript(first["chosen"], first["rejected"])
    # multi-turn kept intact, in the original format, ending at the last Assistant tag
    assert prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?")
    assert prompt.endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
    assert prompt.count("\n\nHuman:") == 3 and prompt.count("\n\nAssistant:") == 3
    assert chosen.startswith(" No, sorry!") and rejected.startswith(" There are lots of funny things")
    assert first["chosen"] == prompt + chosen
    turns = dialogue_turns(prompt)
    assert [t["role"] for t in turns] == ["user", "assistant"] * 2 + ["user"]
    assert turns[-1]["content"] == "okay some of these do not have anything to do with pens"
    for record in _real_records(50):
        p, c, r = split_transcript(record["chosen"], record["rejected"])
        assert record["chosen"] == p + " " + c.strip() and record["rejected"] == p + " " + r.strip()


@needs_hh
def test_real_malformed_records_are_reported_with_file_line_and_reason():
    task = tasks.get("hh", data_dir=shared_data_dir())
    with pytest.warns(UserWarning, match="skipped 9 malformed record"):
        evals, train = task.eval_pairs(limit=None), task.preference_data()
    assert len(evals) + len(train) == 2312 - 9
    report = task.malformed_report()
    assert [r["line"] for r in report] == [87, 517, 926, 1104, 1255, 1689, 1951, 1953, 2037]
    assert all(Path(r["file"]).resolve() == HH_FILE.resolve() for r in report)  # same file, however spelled
    assert {r["reason"] for r in report} == {
        "empty final chosen response",
        "chosen and rejected transcripts differ before their final Assistant turn"}
    assert not {p.prompt for p in evals} & {p.prompt for p in train}  # the hash split holds prompts apart
    assert task.record()["data_source"]["fingerprint"] == "ebfaaed21162a4de"
    with pytest.raises(DataError, match=r"test.jsonl.gz:87: empty final chosen response"):
        tasks.get("hh", data_dir=shared_data_dir(), strict=True).preference_data()


def test_bad_rows_in_local_files(tmp_path):
    folder = tmp_path / "hh-rlhf" / "tiny"
    folder.mkdir(parents=True)
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    lines = [json.dumps(good), "{not json", json.dumps({"chosen": "x"}), json.dumps(good).replace("Human", "Person")]
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    task = tasks.get("hh", data_dir=tmp_path, eval_fraction=1.0)
    with pytest.warns(UserWarning, match="skipped 3 malformed"):
        pairs = task.eval_pairs()
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("\n\nHuman: hi\n\nAssistant:", " hello", " go away")]
    assert [(r["line"], r["reason"].split(" (")[0]) for r in task.malformed_report()] == [
        (2, "invalid JSON"), (3, "record needs fields 'chosen' and 'rejected'"),
        (4, "transcript does not start with 'Human:'")]


@needs_hh
@pytest.mark.slow
def test_scores_real_samples_end_to_end():
    task = tasks.get("hh", data_dir=shared_data_dir())
    with pytest.warns(UserWarning):
        prompts = task.eval_prompts(limit=2)
    samples = tiny_samples(prompts, n=2, max_new_tokens=6)
    pair_logps = [PairLogps("a", -10, -12, -11, -11), PairLogps("b", -10, -9, -10, -10),
                  PairLogps("c", -5, -7, -5, -6)]
    scores = task.score(samples, pair_logps=pair_logps)
    assert scores.metrics["alignment_accuracy"] == pytest.approx(2 / 3)  # margins +2, -1, +1
    assert -1.0 <= scores.metrics["similarity_to_chosen"] <= 1.0
    assert 0.0 <= scores.metrics["closer_to_chosen"] <= 1.0
    assert "win_rate" in scores.details["missing"]  # the offline fallback says what it is not
    assert scores.details["judge"]["name"] == "embedding_similarity"
    assert scores.metrics["token_entropy"] > 0
    # the chosen response is identical to itself: similarity 1, closer to chosen than to rejected
    perfect = [tasks.Sample.from_prompt(p, p.reference) for p in prompts]
    top = task.score(perfect)
    assert top.metrics["similarity_to_chosen"] == pytest.approx(1.0, abs=1e-5)
    assert top.metrics["closer_to_chosen"] == 1.0
