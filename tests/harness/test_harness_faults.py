"""Faults a real `pobench run` survives with nothing lost: a damaged work-dir entry (detected by its
checksums, moved aside, computed again), a full disk while a stage writes, two runs on one work dir,
and SIGKILL at random moments of every stage kind, each followed by a resume.

Runtimes measured on this 2-core machine (OMP_NUM_THREADS=1) when it was otherwise idle: damaged
weights 18 s, truncated samples 6 s, full disk 5 s, two concurrent runs 14 s, and the kill test 210 s
(3.5 min: the uninterrupted smoke run took 44 s, then one resume chain with 20 SIGKILLs; most of the
rest is 20 process starts at ~6 s each, torch/transformers/scipy imports). With other jobs busy on
both cores the same kill test took 7 min at load ~3 and ran past 50 min at load ~12; the other four
took 2-3x longer. All are marked slow.
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydantic
import pytest

import bench.store as store_module
from bench.cli import main

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
#: a smoke suite cut to one method: prefdata, train, and generate + score for DPO and the reference
MINI = ["smoke", "methods={dpo: {}}", "prefdata.prompts=4", "generation.prompts=4"]
#: what differs between two runs that computed the same numbers: when and where they ran, what they cost
VOLATILE = {"created_at", "manifest", "compute", "seconds", "wall_s", "finished_at"}


def volatile(key: str) -> bool:
    return key in VOLATILE or key.endswith(("_seconds", "_rss_mb", "_s"))


def numbers(value, path=""):
    """Every leaf of a leaderboard (timestamps, wall times and the manifest left out) as path -> value."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not volatile(key):
                out.update(numbers(item, f"{path}.{key}"))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(numbers(item, f"{path}[{i}]"))
        return out
    return {path: value}


def assert_same_board(expected: Path, actual: Path) -> None:
    a = numbers(json.loads(expected.read_text()))
    b = numbers(json.loads(actual.read_text()))
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, float) and isinstance(b[key], float):
            assert b[key] == pytest.approx(value, rel=1e-9, abs=1e-9, nan_ok=True), key
        else:
            assert b[key] == value, key


def cli(capsys, work: Path, results: Path, *args: str) -> tuple[int, str]:
    code = main(["run", *args, "--work-dir", str(work), "--results-dir", str(results)])
    return code, capsys.readouterr().err


def entries(work: Path) -> dict[str, list[Path]]:
    return {stage: sorted((work / stage).glob("*/record.json")) for stage in ("prefdata", "train", "generate", "score")}


# ------------------------------------------------------------------------------------------------
# a damaged finished entry


@pytest.mark.slow
def test_damaged_model_in_the_work_dir_is_moved_aside_and_trained_again(capsys, tmp_path):
    work = tmp_path / "work"
    code, err = cli(capsys, work, tmp_path / "a", *MINI)
    assert code == 0, err[-3000:]
    (train_record,) = entries(work)["train"]
    record = json.loads(train_record.read_text())
    weights = Path(record["model_path"]) / "adapter_model.safetensors"  # a LoRA policy is saved as its adapter
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, other content
    weights.write_bytes(bytes(data))
    code, err = cli(capsys, work, tmp_path / "b", *MINI)
    assert code == 0, err[-3000:]
    warned = [line for line in err.splitlines() if line.startswith("pobench: warning:")]
    assert len(warned) == 1 and f"the finished train entry {train_record.parent.name} is damaged" in warned[0]
    assert "model/adapter_model.safetensors changed since the stage finished (sha256 differs)" in warned[0]
    assert "(1 stages computed, 5 cached)" in err  # trained again; what was built on it kept its keys
    assert len(list((work / "train").glob(f"{train_record.parent.name}.corrupt-*"))) == 1
    assert len(list((work / "trainer").glob("train-*.corrupt-*"))) == 1  # the weights, kept for inspection
    assert_same_board(tmp_path / "a" / "leaderboard.json", tmp_path / "b" / "leaderboard.json")


@pytest.mark.slow
def test_truncated_samples_are_never_read_and_are_generated_again(capsys, tmp_path):
    work = tmp_path / "work"
    code, err = cli(capsys, work, tmp_path / "a", *MINI)
    assert code == 0, err[-3000:]
    samples = entries(work)["generate"][0].parent / "samples.jsonl"
    samples.write_bytes(samples.read_bytes()[: samples.stat().st_size // 2])  # cut mid-line
    code, err = cli(capsys, work, tmp_path / "b", *MINI)
    assert code == 0, err[-3000:]
    assert "samples.jsonl has" in err and "bytes, " in err and "when the stage finished" in err
    assert "(1 stages computed, 5 cached)" in err
    assert_same_board(tmp_path / "a" / "leaderboard.json", tmp_path / "b" / "leaderboard.json")


# ------------------------------------------------------------------------------------------------
# a full disk


@pytest.mark.slow
def test_full_disk_while_a_stage_writes_says_so_and_nothing_looks_finished(capsys, tmp_path, monkeypatch):
    work = tmp_path / "work"
    real = store_module.atomic_write_bytes

    def full_in_generate(path, data):
        if "generate" in Path(path).parts:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(store_module, "atomic_write_bytes", full_in_generate)
    code, err = cli(capsys, work, tmp_path / "a", *MINI)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert lines[-1].startswith("pobench: error in generate ") and ": disk full: no space left on the device of " \
        f"the work dir {work}" in lines[-1] and "samples.jsonl" in lines[-1] and "--work-dir" in lines[-1]
    assert entries(work)["generate"] == [] and list((work / "generate").glob("*.partial"))
    kept = sum(len(found) for found in entries(work).values())
    assert kept >= 1  # prefdata (and the training, when the plan put it first) finished before the disk filled
    monkeypatch.setattr(store_module, "atomic_write_bytes", real)
    code, err = cli(capsys, work, tmp_path / "b", *MINI)  # space again: the run finishes what was left
    assert code == 0, err[-3000:]
    assert f"({6 - kept} stages computed, {kept} cached)" in err


# ------------------------------------------------------------------------------------------------
# two runs on one work dir


@pytest.mark.slow
def test_two_runs_on_one_work_dir_compute_each_stage_once(tmp_path):
    work = tmp_path / "work"
    procs, logs = [], []
    for name in ("a", "b"):
        logs.append(tmp_path / f"{name}.log")
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.cli", "run", *MINI, "--work-dir", str(work),
                                       "--results-dir", str(tmp_path / name)], cwd=REPO, env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=open(logs[-1], "w")))
    for proc in procs:
        proc.wait(timeout=600)
    errs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], errs
    computed = [int(e.split(" stages computed")[0].rsplit("(", 1)[1]) for e in errs]
    assert sum(computed) == 6, computed  # every stage once, by one of the two
    assert any("[pobench] waiting: pobench pid" in e for e in errs)  # the other one said it waited
    assert_same_board(tmp_path / "a" / "leaderboard.json", tmp_path / "b" / "leaderboard.json")
    assert not list(work.glob("*/*.partial")) and not list(work.glob("*/*.corrupt-*"))


# ------------------------------------------------------------------------------------------------
# SIGKILL at random moments of every stage kind, each followed by a resume

KINDS = ("prefdata", "prep", "train", "generate", "score")


def start(work: Path, results: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "smoke", "--work-dir", str(work),
                             "--results-dir", str(results)], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=open(log, "a"), start_new_session=True)


def timeline(work: Path, t0: float) -> list[dict]:
    """The nodes of a finished run in the order it computed them, each with its window (s after t0)."""
    nodes = []
    for path in work.glob("*/*/record.json"):
        record = json.loads(path.read_text())
        if record["stage"] == "report":  # the leaderboard files' entry: the run's final phase, not a plan node
            continue
        nodes.append({"stage": record["stage"], "key": record["key"], "end": record["finished_at"] - t0,
                      "start": record["finished_at"] - record["seconds"] - t0})
    return sorted(nodes, key=lambda n: n["end"])


def kill_moments(nodes: list[dict], duration: float, n: int, seed: int) -> list[float]:
    """``n`` moments of the uninterrupted run: one inside a random node of each stage kind, the rest
    uniform over the whole run (start-up and the final leaderboard included), sorted."""
    rng = random.Random(seed)
    moments = []
    for kind in KINDS:  # in the node's first half: a resumed stage may run faster than this one did
        node = rng.choice([x for x in nodes if x["stage"] == kind])
        moments.append(rng.uniform(node["start"], (node["start"] + node["end"]) / 2))
    moments += [rng.uniform(0, duration) for _ in range(n - len(moments))]
    return sorted(moments)


def holder(work: Path, node: dict) -> int | None:
    """The pid that last took the node's lock (the store writes it there)."""
    try:
        text = (work / node["stage"] / f"{node['key']}.lock").read_text()
    except FileNotFoundError:
        return None
    return int(text.split()[2]) if text.startswith("pobench pid ") else None


@pytest.mark.slow
def test_sigkill_at_20_random_moments_then_resume_gives_the_same_leaderboard(tmp_path):
    started = time.time()
    log = tmp_path / "runs.log"
    # the uninterrupted run: its leaderboard, and the moments of its timeline the kills replay
    t0 = time.time()
    proc = start(tmp_path / "ref-work", tmp_path / "ref", log)
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    duration = time.time() - t0
    nodes = timeline(tmp_path / "ref-work", t0)
    assert {n["stage"] for n in nodes} == set(KINDS)
    moments = kill_moments(nodes, duration, n=20, seed=13)
    work, results = tmp_path / "work", tmp_path / "results"
    kills: list[tuple[float, str, str]] = []  # (moment, where it fell in the uninterrupted run, what was running)
    proc, proc_t0 = start(work, results, log), time.time()
    try:
        for moment in moments:
            # where the moment falls in the uninterrupted run: start-up, inside node j, or the final leaderboard
            j = next((i for i, n in enumerate(nodes) if moment < n["end"]), None)
            if j is not None and moment < nodes[0]["start"]:
                offset = moment - (time.time() - proc_t0)  # start-up: from this process's start
            else:
                # wait until this process computes node j or a later one (it skips what earlier ones
                # finished), or, for the final leaderboard, until every stage is finished
                while proc.poll() is None:
                    reached = max((i for i, n in enumerate(nodes) if holder(work, n) == proc.pid), default=-1)
                    if (j is not None and reached >= j) or all(
                            (work / n["stage"] / n["key"] / "record.json").exists() for n in nodes):
                        break
                    time.sleep(0.02)
                offset = moment - (nodes[-1]["end"] if j is None else nodes[j]["start"])
            time.sleep(max(0.0, offset))
            if proc.poll() is not None:
                break  # the run finished before this moment: the chain is over
            running = next((n["stage"] for n in nodes if holder(work, n) == proc.pid
                            and not (work / n["stage"] / n["key"] / "record.json").exists()), "start-up/leaderboard")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills.append((round(moment, 1), "start-up" if j is not None and moment < nodes[0]["start"] else
                          "leaderboard" if j is None else nodes[j]["stage"], running))
            proc, proc_t0 = start(work, results, log), time.time()  # the resume
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:  # a failed assertion leaves no run behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"{len(kills)} kills in {time.time() - started:.0f} s (uninterrupted run {duration:.0f} s): {kills}")
    assert len(kills) >= 20, kills
    assert set(KINDS) <= {running for _, _, running in kills}, kills  # every stage kind was killed mid-way
    assert not list(work.glob("*/*.corrupt-*"))  # a kill never damages a finished entry
    assert_same_board(tmp_path / "ref" / "leaderboard.json", results / "leaderboard.json")


# ------------------------------------------------------------------------------------------------
# Ctrl-C


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_and_the_next_run_resumes(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    # 200 optimizer steps (~40 s): the whole mini run takes 8 s otherwise and can finish before the signal lands
    args = [sys.executable, "-m", "bench.cli", "run", *MINI, "train.steps=200", "--plain", "--work-dir", str(work),
            "--results-dir", str(results)]
    proc = subprocess.Popen(args, cwd=REPO, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in proc.stderr:  # interrupt while the training stage runs, after the preference data finished
        seen.append(line)
        if "start  train" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, "".join(seen) + rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest[-3000:]
    lines = rest.splitlines()
    assert lines[-1] == "pobench: interrupted; finished stages are kept: run the same command again to resume"
    # the stage the signal landed in (the 2-step training, or a later stage when the test reads the log late
    # on a loaded machine) says so; what finished before it is kept
    assert any(" failed " in line and line.endswith(": interrupted") for line in lines), rest[-3000:]
    assert len(entries(work)["prefdata"]) == 1
    resumed = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    finished = sum("] done   " in line for line in seen + lines)  # the stages before the interrupt
    assert 1 <= finished < 6
    assert f"({6 - finished} stages computed, {finished} cached)" in resumed.stderr, resumed.stderr[-3000:]


class _InterruptedWhileSerialising(pydantic.BaseModel):
    """Params whose serializer is where Ctrl-C lands (in CI it landed in `added_field`'s serializer while
    the train node's params were hashed), so pydantic turns the KeyboardInterrupt into its own error."""
    value: int = 0

    @pydantic.model_serializer(mode="wrap")
    def _interrupted(self, handler):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the signal is handled here, inside pydantic's call
        return handler(self)


def test_ctrl_c_inside_a_library_callback_still_ends_the_run_as_an_interrupt(tmp_path, capsys):
    from types import SimpleNamespace

    from bench import interrupts
    from bench.stages import StageContext, execute_node

    class Store:  # what execute_node calls: hashing the node's params is where the signal lands
        root = tmp_path

        def run(self, stage, key, compute, owned, label, inputs):
            raise AssertionError("not reached")

    node = SimpleNamespace(stage="train", key="k", label="train dpo s0", deps={}, params=_InterruptedWhileSerialising())
    previous = interrupts.install()
    try:
        with pytest.raises(Exception) as wrapped:  # what pydantic makes of it
            node.params.model_dump()
        assert not isinstance(wrapped.value, KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            execute_node(StageContext(tmp_path), Store(), node)
    finally:
        interrupts.restore(previous)
    assert signal.getsignal(signal.SIGINT) is previous
