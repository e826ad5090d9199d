"""The content-addressed store: outputs appear whole or not at all; finished work is never redone."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from bench.store import Store, atomic_write_json


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
