"""What `pobench run` shows while it works: start/end lines per stage with [N/M], elapsed and an ETA
from the plan's work at measured rates; training steps with the loss; plain logs without control
characters; --quiet; library progress bars switched off."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import load_suite
from bench.plan import build_plan
from bench.stages import stage
from bench.progress import PRIOR_SECONDS, RunDisplay, WorkClock, choose_mode, duration, node_id

REPO = Path(__file__).resolve().parents[2]
CONTROL = re.compile(r"[\r\x1b\x00-\x08\x0b\x0c\x0e-\x1f]")


def pobench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def smoke_plan(*overrides: str):
    return build_plan(load_suite("smoke", list(overrides)))


# ----------------------------------------------------------------------------------------------
# the ETA


def test_eta_prices_the_plans_work_at_priors_then_at_measured_rates():
    plan = smoke_plan("methods=dpo", "methods.dpo.beta=0.1")
    nodes = {n.stage: n for n in reversed(plan.nodes)}  # first node of each stage
    clock = WorkClock(plan, done=set())
    # prefdata 12 x 4 samples, reference + dpo generate 8 x 2 each, dpo's KL 16 sequences, 2 steps,
    # the reference's score (no units: a node's worth)
    prior = (48 + 16 + 16) * PRIOR_SECONDS["sampled_sequences"] + 16 * PRIOR_SECONDS["kl_sequences"] \
        + 2 * PRIOR_SECONDS["train_steps"] + 2.0
    assert clock.remaining() == (pytest.approx(prior), True)
    train = node_id(nodes["train"])
    clock.observe(train, 10.0)  # 5 s per optimizer step measured
    clock.finish(train)
    left, uses_prior = clock.remaining()
    assert left == pytest.approx(prior - 2 * PRIOR_SECONDS["train_steps"]) and uses_prior
    generate = node_id(nodes["generate"])
    clock.observe(generate, 1.6)  # 0.1 s per sampled sequence: prefdata's sampling is priced at it too
    clock.finish(generate)
    left, _ = clock.remaining()
    assert left == pytest.approx((48 + 16) * 0.1 + 16 * PRIOR_SECONDS["kl_sequences"] + 2.0)
    # the running node counts what it has left
    running = [k for k in clock.todo if k not in clock.finished][0]
    assert clock.remaining(running, 1.0)[0] == pytest.approx(left - 1.0)
    # "(prior)" only while more than a tenth of the estimate rests on priors: the reference's score node
    # (no units, 2 s at the prior) is most of what is left here ...
    score = next(n for n in plan.nodes if n.stage == "score" and stage("score").work(n).get("kl_sequences"))
    clock.observe(node_id(score), 1.6)
    clock.finish(node_id(score))
    assert clock.remaining() == (pytest.approx((48 + 16) * 0.1 + 2.0), True)
    # ... but only a sliver once the measured rates are slow: 10 s per sampled and teacher-forced sequence
    slow = WorkClock(plan, done=set())
    for node, seconds in ((nodes["generate"], 160.0), (score, 160.0)):
        slow.observe(node_id(node), seconds)
        slow.finish(node_id(node))
    assert slow.remaining() == (pytest.approx((48 + 16) * 10.0 + 2 * PRIOR_SECONDS["train_steps"] + 2.0), False)


def test_cached_nodes_cost_nothing_and_unknown_sizes_are_a_node_of_their_stage(tmp_path):
    plan = smoke_plan("methods=dpo", "methods.dpo.beta=0.1")
    clock = WorkClock(plan, done={node_id(n) for n in plan.nodes if n.stage != "score"})
    assert clock.remaining() == (pytest.approx(16 * PRIOR_SECONDS["kl_sequences"] + 2.0), True)


def test_duration_reads_like_a_clock():
    assert [duration(s) for s in (0, 59.6, 61, 3600 * 2 + 62)] == ["0:00", "1:00", "1:01", "2:01:02"]


# ----------------------------------------------------------------------------------------------
# the display


def test_mode_bar_only_on_a_terminal_plain_when_asked_quiet_first():
    class Terminal:
        def isatty(self):
            return True

    assert choose_mode(stream=Terminal()) == "bar"
    assert choose_mode(stream=Terminal(), plain=True) == "plain"
    assert choose_mode(stream=Terminal(), quiet=True, plain=True) == "quiet"
    assert choose_mode(stream=open(os.devnull, "w")) == "plain"


def test_start_and_end_lines_carry_position_elapsed_and_eta():
    plan = smoke_plan("methods=dpo", "methods.dpo.beta=0.1")
    lines: list[str] = []
    with RunDisplay("plain", callback=lines.append) as display:
        display.plan(plan, done={node_id(plan.nodes[0])})
        display.stage_started(plan.nodes[0])  # cached: no start line
        display.stage_finished(plan.nodes[0], "cached", 0.0)
        display.stage_started(plan.nodes[1])
        display.stage_finished(plan.nodes[1], "done", 1.5)
    total = len(plan.nodes)
    assert lines[0].startswith(f"[pobench] [1/{total}] cached prefdata")
    assert re.fullmatch(rf"\[pobench\] \[2/{total}\] start  generate  generate reference s0 \(16 sampled_sequences\) "
                        r"\| elapsed 0:00, ETA \d+:\d\d \(prior\)", lines[1])
    assert re.fullmatch(rf"\[pobench\] \[2/{total}\] done   generate  generate reference s0 1.5s "
                        r"\| elapsed 0:00, ETA \d+:\d\d( \(prior\))?", lines[2])


def test_training_steps_as_lines_in_a_log_about_every_tenth():
    lines: list[str] = []
    with RunDisplay("plain", callback=lines.append) as display:
        steps = display.training(total=40, initial=0, desc="train dpo s0")
        for step in range(1, 41):
            steps.advance(step, {"loss": 0.7 - step / 100})
        steps.close()
    assert len(lines) == 10 and lines[-1].startswith("[pobench]          train dpo s0: step 40/40, loss 0.3 (")
    assert "step 4/40, loss 0.66 (" in lines[0]


def test_quiet_shows_only_what_must_be_seen():
    lines: list[str] = []
    with RunDisplay("quiet", callback=lines.append) as display:
        display.line("[pobench] a stage started")
        steps = display.training(total=4, initial=0, desc="train")
        steps.advance(4, {"loss": 0.1})
        display.line("[pobench] done", always=True)
    assert lines == ["[pobench] done"]


def test_library_progress_bars_are_off_during_a_run_and_back_after():
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    with RunDisplay("plain", callback=lambda line: None):
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()


def test_a_run_display_imports_transformers_only_for_a_stage_it_computes():
    """A fully cached run never imports transformers (about a second); imported during the run without a
    computed stage, its bars start off and are on after; a computed stage quiets it (errors only in quiet)."""
    script = """
import sys
from huggingface_hub import utils as hub_utils
from bench.progress import RunDisplay
with RunDisplay("quiet", callback=lambda line: None):
    assert "transformers" not in sys.modules and hub_utils.are_progress_bars_disabled()
    from transformers.utils import logging as hf_logging
    assert not hf_logging.is_progress_bar_enabled()
assert "transformers" in sys.modules and hf_logging.is_progress_bar_enabled()
assert not hub_utils.are_progress_bars_disabled()
verbosity = hf_logging.get_verbosity()
with RunDisplay("quiet", callback=lambda line: None) as display:
    display._quiet.include_transformers()
    assert not hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == hf_logging.ERROR
assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == verbosity
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    proc = pobench("run", "smoke", "methods=dpo,tis_dpo", "--plain", "--work-dir", str(root / "work"),
                   "--results-dir", str(root / "results"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, proc


@pytest.mark.slow
def test_a_plain_smoke_run_logs_every_stage_with_position_and_eta_and_no_control_characters(plain_run):
    _, proc = plain_run
    err = proc.stderr
    assert not CONTROL.search(err.replace("\n", "")), [line for line in err.splitlines() if CONTROL.search(line)][:3]
    assert "Loading weights" not in err and "Writing model shards" not in err
    plan = smoke_plan("methods=dpo,tis_dpo")
    total = len(plan.nodes)
    for i, node in enumerate(plan.nodes, 1):
        tag = rf"\[pobench\] \[\s*{i}/{total}\]"
        assert re.search(rf"^{tag} start  {node.stage}\s+{re.escape(node.label)}.* \| elapsed \d+:\d\d, ETA \d+:\d\d",
                         err, re.M), node.label
        assert re.search(rf"^{tag} done   {node.stage}\s+{re.escape(node.label)} \d+\.\ds \| elapsed \d+:\d\d, "
                         r"ETA \d+:\d\d", err, re.M), node.label
    # every training shows its steps with the loss; the built-in data is named at the start
    assert len(re.findall(r"train dpo\(beta=0.1\) s0: step 2/2, loss \d", err)) == 1
    assert "[pobench] built-in material, not the task's dataset: imdb" in err.splitlines()[2]
    assert err.splitlines()[-1].startswith("[pobench] done in ")
    assert proc.stdout.startswith("## pobench leaderboard: smoke")


@pytest.mark.slow
def test_quiet_prints_the_final_line_alone_and_errors(plain_run, tmp_path):
    root, _ = plain_run
    proc = pobench("run", "smoke", "methods=dpo,tis_dpo", "--quiet", "--work-dir", str(root / "work"),
                   "--results-dir", str(root / "results"))
    assert proc.returncode == 0 and proc.stdout == ""
    assert re.fullmatch(r"\[pobench\] done in \d+\.\ds \(0 stages computed, \d+ cached\); leaderboard: .*\n",
                        proc.stderr)
    # a stage that fails: its line (and the traceback) still shows
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = pobench("run", "smoke", "methods=dpo", "task_options.imdb.source=local", "--quiet", "--work-dir",
                     str(tmp_path / "work"), env={"POBENCH_SHARED_DATA": str(empty)})
    assert failed.returncode != 0 and failed.stdout == ""
    assert re.search(r"^\[pobench\] \[1/\d+\] failed prefdata  prefdata imdb after \d+\.\ds: TaskError$",
                     failed.stderr, re.M), failed.stderr[-2000:]
    # the message once, on the last line
    assert failed.stderr.count("not found under") == 1, failed.stderr[-2000:]
    assert failed.stderr.splitlines()[-1].startswith("pobench: ")


@pytest.mark.slow
def test_run_suite_still_hands_every_line_to_a_callback(tmp_path, capfd):
    from bench.runner import run_suite

    suite = load_suite("smoke", ["methods=dpo", "methods.dpo.beta=0.1", "train.steps=1",
                                 f"work_dir={tmp_path / 'work'}", f"results_dir={tmp_path / 'results'}"])
    lines: list[str] = []
    run_suite(suite, progress=lines.append)
    assert lines[0].startswith("[pobench] suite smoke:") and lines[-1].startswith("[pobench] done in ")
    nodes = len(build_plan(suite).nodes)
    starts = [line for line in lines if re.match(r"\[pobench\] \[\d/6\] start ", line)]
    ends = [line for line in lines if re.match(r"\[pobench\] \[\d/6\] done ", line)]
    assert len(starts) == len(ends) == nodes == 6
    assert "[pobench]" not in capfd.readouterr().err  # the callback got them all
