"""The content-addressed store: outputs appear whole or not at all; finished work is never redone; a damaged
entry is never read (checksums), a full disk leaves nothing that looks finished, two processes compute a key once."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import bench.store as store_module
from bench.store import (CorruptEntryWarning, DiskFullError, Store, StoreError, atomic_write_json, atomic_write_jsonl,
                         record_digest)


def test_run_computes_once_and_records(tmp_path):
    store = Store(tmp_path)
    calls = []

    def fn(out):
        calls.append(out)
        (out / "data.txt").write_text("hello")
        return {"answer": 42}

    first, computed = store.run("train", "k1", fn, inputs={"lr": 1})
    again, computed_again = store.run("train", "k1", fn)
    assert computed and not computed_again and len(calls) == 1
    assert first.path == again.path == tmp_path / "train" / "k1"
    assert (first.path / "data.txt").read_text() == "hello"
    record = first.record
    assert record["answer"] == 42 and record["inputs"] == {"lr": 1} and record["stage"] == "train"
    assert not (tmp_path / "train" / "k1.partial").exists()
    assert store.status("train", "k1") == "done" and store.status("train", "k2") == "todo"


def test_failure_leaves_no_output_and_keeps_partial_for_resume(tmp_path):
    store = Store(tmp_path)

    def boom(out):
        (out / "checkpoint").write_text("step 3")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.run("train", "k", boom)
    assert store.get("train", "k") is None
    assert store.status("train", "k") == "partial"
    seen = {}

    def resume(out):
        seen["checkpoint"] = (out / "checkpoint").read_text()  # what the interrupted attempt left
        return {}

    store.run("train", "k", resume)
    assert seen == {"checkpoint": "step 3"} and store.status("train", "k") == "done"


def test_kill_9_mid_stage_then_resume(tmp_path):
    """A process killed with SIGKILL inside a stage leaves no finished output; the next run finishes it."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from bench.store import Store
        def fn(out):
            (out / "half").write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
        Store({str(tmp_path)!r}).run("score", "abc", fn)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    store = Store(tmp_path)
    assert store.get("score", "abc") is None and store.status("score", "abc") == "partial"
    out, computed = store.run("score", "abc", lambda out: {"ok": True})
    assert computed and out.record["ok"] is True


def test_leftover_final_dir_without_record_is_not_a_result(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "generate" / "k").mkdir(parents=True)  # e.g. a crash between rename and fsync
    assert store.status("generate", "k") == "todo"
    out, computed = store.run("generate", "k", lambda out: {"n": 1})
    assert computed and out.record["n"] == 1


def test_atomic_write_json_replaces_whole_file(tmp_path):
    path = tmp_path / "a" / "b.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temp files left


# ------------------------------------------------------------------------------------------------
# checksums: a damaged finished entry is detected, moved aside with a warning and computed again


def _finish(store, stage="generate", key="k", payload=b"x" * 1000, owned=()):
    def fn(out):
        (out / "samples.jsonl").write_bytes(payload)
        (out / "sub").mkdir(exist_ok=True)
        (out / "sub" / "more.txt").write_text("more")
        return {"n": 1}

    return store.run(stage, key, fn, owned=owned)


def test_finished_entry_records_size_and_sha256_of_every_file(tmp_path):
    store = Store(tmp_path)
    out, _ = _finish(store)
    sums = out.record["checksums"]
    assert sums["algorithm"] == "sha256" and set(sums["files"]) == {"samples.jsonl", "sub/more.txt"}
    size, digest = sums["files"]["samples.jsonl"]
    assert size == 1000 and digest == hashlib.sha256(b"x" * 1000).hexdigest()
    assert sums["record"] == record_digest(out.record)


@pytest.mark.parametrize("damage", ["truncate", "same_size_edit", "delete", "record_edit", "record_garbage"])
def test_damaged_entry_is_moved_aside_with_a_warning_and_recomputed(tmp_path, damage):
    store = Store(tmp_path)
    out, _ = _finish(store)
    target = out.path / "samples.jsonl"
    if damage == "truncate":
        target.write_bytes(b"x" * 10)
    elif damage == "same_size_edit":
        target.write_bytes(b"y" + b"x" * 999)
    elif damage == "delete":
        target.unlink()
    elif damage == "record_edit":  # still valid JSON, one number changed
        (out.path / "record.json").write_text((out.path / "record.json").read_text().replace('"n": 1', '"n": 2'))
    else:
        (out.path / "record.json").write_bytes(b'{"stage": "gen')
    fresh = Store(tmp_path)  # a new process: nothing hashed yet
    with pytest.warns(CorruptEntryWarning, match=r"generate entry k is damaged .* moved aside to generate/k\.corrupt-"):
        assert fresh.get("generate", "k") is None
    aside = list((tmp_path / "generate").glob("k.corrupt-*"))
    assert len(aside) == 1 and not (tmp_path / "generate" / "k").exists()  # kept for inspection, never deleted
    calls = []
    def recompute(out):
        calls.append(1)
        (out / "samples.jsonl").write_text("new")

    again, computed = fresh.run("generate", "k", recompute)
    assert computed and calls == [1] and (again.path / "samples.jsonl").read_text() == "new"


def test_a_run_finds_a_damaged_small_entry_and_computes_it_again(tmp_path):
    """Store.run (what a run does for every node) hashes small entries in full: a same-size edit is caught."""
    _finish(Store(tmp_path))
    (tmp_path / "generate" / "k" / "samples.jsonl").write_bytes(b"y" * 1000)
    with pytest.warns(CorruptEntryWarning):
        _, computed = Store(tmp_path).run("generate", "k", lambda out: {"n": 2})
    assert computed


def test_large_entries_get_a_size_check_on_cached_runs_and_a_full_hash_when_read(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "FULL_HASH_BYTES", 100)  # the 1000-byte entry counts as large
    _finish(Store(tmp_path))
    (tmp_path / "generate" / "k" / "samples.jsonl").write_bytes(b"y" * 1000)  # same size, other bytes
    store = Store(tmp_path)
    hashed = []
    real = store_module.file_sha256
    monkeypatch.setattr(store_module, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    _, computed = store.run("generate", "k", lambda out: {"n": 2})
    assert not computed and hashed == []  # a cached run: sizes only, nothing read
    with pytest.warns(CorruptEntryWarning, match="samples.jsonl changed since the stage finished"):
        assert store.get("generate", "k") is None  # before a stage reads it: hashed in full
    # a sound large entry is hashed once per process, not on every read
    _finish(store, key="k2")
    hashed.clear()
    fresh = Store(tmp_path)
    assert fresh.get("generate", "k2") is not None and fresh.get("generate", "k2") is not None
    assert sorted(hashed) == ["more.txt", "samples.jsonl"]


def test_owned_directories_are_checksummed_and_moved_aside_with_their_entry(tmp_path):
    store = Store(tmp_path)
    trainer = tmp_path / "trainer" / "train-k"

    def fn(out):
        (trainer / "model").mkdir(parents=True)
        (trainer / "model" / "model.safetensors").write_bytes(b"w" * 64)
        return {"model_path": str(trainer / "model")}

    out, _ = store.run("train", "k", fn, owned=[trainer])
    assert out.record["checksums"]["owned"] == {
        "trainer/train-k": {"model/model.safetensors": [64, hashlib.sha256(b"w" * 64).hexdigest()]}}
    (trainer / "model" / "model.safetensors").write_bytes(b"w" * 10)  # a truncated checkpoint
    with pytest.warns(CorruptEntryWarning, match=r"trainer/train-k/model/model.safetensors has 10 bytes, 64"):
        assert Store(tmp_path).get("train", "k") is None
    assert not trainer.exists() and len(list((tmp_path / "trainer").glob("train-k.corrupt-*"))) == 1
    assert len(list((tmp_path / "train").glob("k.corrupt-*"))) == 1


def test_entries_finished_before_checksums_existed_are_accepted(tmp_path):
    legacy = tmp_path / "score" / "old"
    legacy.mkdir(parents=True)
    (legacy / "scores.json").write_text("{}")
    atomic_write_json(legacy / "record.json", {"stage": "score", "key": "old"})
    store = Store(tmp_path)
    assert store.get("score", "old") is not None and store.status("score", "old") == "done"


# ------------------------------------------------------------------------------------------------
# a full disk while a stage writes


def test_disk_full_while_writing_names_the_work_dir_and_leaves_nothing_finished(tmp_path, monkeypatch):
    store = Store(tmp_path / "work")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    def fn(out):
        (out / "checkpoint").write_text("step 1")
        monkeypatch.setattr(os, "fsync", full)  # the stage's own atomic write hits the full disk
        atomic_write_jsonl(out / "samples.jsonl", [{"a": 1}])

    with pytest.raises(StoreError) as info:
        store.run("generate", "k", fn, label="generate dpo s0")
    message = str(info.value)
    assert message.startswith(f"disk full: no space left on the device of the work dir {store.root}")
    assert "generate stage generate dpo s0" in message and "samples.jsonl" in message and "--work-dir" in message
    assert isinstance(info.value.__cause__, DiskFullError)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert store.get("generate", "k") is None and store.status("generate", "k") == "partial"
    assert not list((tmp_path / "work" / "generate" / "k.partial").glob(".samples.jsonl.*.tmp"))  # temp removed
    out, computed = Store(tmp_path / "work").run("generate", "k", lambda out: {"ok": 1})
    assert computed and out.record["ok"] == 1


def test_disk_full_while_writing_the_record_leaves_nothing_finished(tmp_path, monkeypatch):
    store = Store(tmp_path)
    real = store_module.atomic_write_json

    def full(path, data):
        if Path(path).name == "record.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(store_module, "atomic_write_json", full)
    with pytest.raises(StoreError, match="disk full: .*record.json"):
        store.run("score", "k", lambda out: (out / "scores.json").write_text("{}") and None)
    monkeypatch.setattr(store_module, "atomic_write_json", real)
    assert Store(tmp_path).status("score", "k") == "partial"


# ------------------------------------------------------------------------------------------------
# two processes, one key


def test_two_processes_on_one_key_compute_it_once_and_the_second_says_it_waits(tmp_path):
    log = tmp_path / "computed.log"
    script = textwrap.dedent(f"""
        import os, sys, time
        from bench.store import Store
        def fn(out):
            with open({str(log)!r}, "a") as handle:
                handle.write(f"{{os.getpid()}}\\n")
            time.sleep(2.0)
            (out / "data").write_text("x")
        out, computed = Store({str(tmp_path / 'work')!r}).run("train", "shared", fn, label="train dpo s0")
        print("computed" if computed else "cached")
    """)
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not log.exists() and time.time() < deadline:  # the first holds the lock
        time.sleep(0.05)
    second = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert [out1.strip(), out2.strip()] == ["computed", "cached"]
    assert log.read_text().splitlines() == [str(first.pid)]  # the stage ran once
    assert f"waiting: pobench pid {first.pid}" in err2 and "train train dpo s0" in err2
