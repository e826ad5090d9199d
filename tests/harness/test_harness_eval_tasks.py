"""Model-evaluation tasks inside suites (``eval_tasks``): validation, the ``evaluate`` plan stage, and a
real run of a tiny suite whose policy and reference are evaluated by lm-eval (GSM8K + ARC-Challenge
from the shared data folder), with the metrics as extra leaderboard columns that ``check`` covers."""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from bench.config import ConfigError, load_suite, validate
from bench.plan import build_plan
from tasks.base import shared_data_dir
from tasks.reasoning import LOCAL_FILES

REPO = Path(__file__).resolve().parents[2]
DATA = shared_data_dir()
needs_data = pytest.mark.skipif(not all((DATA / f).exists() for f in LOCAL_FILES),
                                reason=f"GSM8K/ARC-Challenge files not found under {DATA} (set POBENCH_SHARED_DATA)")
REASONING_METRICS = ("gsm8k_exact_match_strict_match", "gsm8k_exact_match_flexible_extract", "arc_challenge_acc",
                     "arc_challenge_acc_norm")


def minimal(**extra):
    return {"name": "t", "methods": {"dpo": {}}, **extra}


@pytest.mark.parametrize("data, expected", [
    (minimal(eval_tasks=["imdb"]), "eval_tasks[0]: task 'imdb' scores generated samples (evaluation='samples'); "
                                   "eval_tasks takes model-evaluation tasks: ['reasoning']"),
    (minimal(eval_tasks=["reasonin"]), "eval_tasks[0]: unknown task 'reasonin'; model-evaluation tasks: ['reasoning']"),
    (minimal(eval_tasks=["reasoning", "reasoning"]), "eval_tasks[1]: 'reasoning' is listed twice"),
    (minimal(eval_tasks="reasoning", task_options={"reasoning": {"leaderbord": True}}),
     "task_options.reasoning.leaderbord: unknown option of task 'reasoning'; allowed: ['apply_chat_template'"),
    (minimal(task_options={"reasoning": {}}), "task_options.reasoning: not one of this suite's tasks ['imdb']"),
    (minimal(tasks=["reasoning"]), "tasks[0]: task 'reasoning' evaluates checkpoints"),
    (minimal(tasks=["reasoning"]), "list it under `eval_tasks: [reasoning]`"),
    (minimal(eval_tasks=["reasoning"], eval={"limit": 0}), "eval.limit: 0 is below the minimum 1"),
    (minimal(eval_tasks=["reasoning"], eval={"device": "tpu"}), "eval.device: 'tpu' is not one of ['auto', 'cpu'"),
    (minimal(eval_tasks=["reasoning"], eval={"limt": 2}), "eval.limt: unknown field; allowed fields of eval: ['limit'"),
])
def test_errors_name_the_field_and_allowed_values(data, expected):
    with pytest.raises(ConfigError) as info:
        validate(data, source="suite.yaml")
    assert str(info.value).startswith("suite.yaml: ")
    assert expected in str(info.value)


def test_an_eval_task_reporting_a_training_tasks_metric_is_rejected(monkeypatch):
    import tasks
    from tasks.reasoning import Reasoning

    class Clash(Reasoning):  # a model-evaluation task whose metric would overwrite imdb's reward column
        name = "clash"
        metrics = (tasks.base.Metric("reward", True, "same name as imdb's"),)

    monkeypatch.setitem(tasks._registered, "clash", Clash)  # what tasks.register does, undone after the test
    with pytest.raises(ConfigError, match=r"eval_tasks\[0\]: task 'clash' reports metric 'reward', which 'imdb' "
                                          r"already reports"):
        validate(minimal(eval_tasks=["clash"]))


def test_plan_has_one_evaluate_node_per_policy_and_one_for_the_reference():
    suite = validate(minimal(methods={"dpo": {"beta": [0.1, 0.5]}}, seeds=[0, 1], eval_tasks=["reasoning"],
                             eval={"limit": 5}))
    plan = build_plan(suite)
    evaluate = plan.by_stage("evaluate")
    # 2 betas x 2 seeds policies + the reference, whose seeds share one deterministic evaluation
    assert len(evaluate) == 5
    for cell in plan.cells:
        node = cell.evals["reasoning"]
        assert node.stage == "evaluate" and (node.params.limit, node.params.gen_kwargs) == (5, {})
        if cell.method == "reference":
            assert "policy" not in node.deps
        else:
            assert node.deps["policy"] is cell.train
    ref = {c.evals["reasoning"].key for c in plan.cells if c.method == "reference"}
    assert len(ref) == 1
    # every evaluate node comes after its inputs (the executors run nodes in this order)
    order = {(n.stage, n.key): i for i, n in enumerate(plan.nodes)}
    for node in evaluate:
        assert all(order[(d.stage, d.key)] < order[(node.stage, node.key)] for d in node.deps.values())


def test_evaluate_keys_follow_their_inputs_only():
    base = minimal(eval_tasks=["reasoning"], eval={"limit": 5})
    keys = lambda data: {c.label: c.evals["reasoning"].key for c in build_plan(validate(data)).cells}  # noqa: E731
    a = keys(base)
    assert keys({**base, "eval": {"limit": 5, "device": "cpu"}}) == a  # where it runs changes nothing measured
    limit = keys({**base, "eval": {"limit": 6}})
    assert limit["dpo"] != a["dpo"] and limit["reference"] != a["reference"]
    options = keys({**base, "task_options": {"reasoning": {"num_fewshot": 0}}})
    assert options["dpo"] != a["dpo"] and options["reference"] != a["reference"]
    trained = keys({**base, "train": {"lr": 1e-4}})
    assert trained["dpo"] != a["dpo"] and trained["reference"] == a["reference"]
    # adding an eval task re-keys no other stage
    other = {(n.stage, n.key) for n in build_plan(validate(minimal())).nodes}
    assert other <= {(n.stage, n.key) for n in build_plan(validate(base)).nodes}


def test_plan_command_shows_the_evaluate_stage(tmp_path, capsys):
    import argparse

    from bench.commands import plan as plan_command

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmethods: {dpo: {}}\neval_tasks: [reasoning]\neval: {limit: 3}\n")
    parser = argparse.ArgumentParser()
    plan_command.register(parser.add_subparsers())
    args = parser.parse_args(["plan", str(path), "--work-dir", str(tmp_path / "work")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "model evaluation: reasoning on every policy and the reference (3 items per benchmark)" in out
    assert "evaluate:todo" in out and "evaluate 0/2 done" in out and "model_evaluations 2" in out


def test_the_sparsepo_hh_paper_suite_evaluates_reasoning():
    suite = load_suite(REPO / "configs" / "paper" / "sparsepo_hh.yaml")
    assert suite.eval_tasks == ["reasoning"]
    assert suite.task_options["reasoning"].get("leaderboard") is True  # the Open LLM Leaderboard v2 group
    plan = build_plan(suite)
    assert len(plan.by_stage("evaluate")) == len({c.label for c in plan.cells})  # one seed: one per row


# ----------------------------------------------------------------------------------------------
# the stage on a PEFT adapter: as is for a transformers evaluator, merged for vLLM


@pytest.mark.slow
@pytest.mark.parametrize("backend, given_as", [("hf", "PEFT adapter"), ("vllm", "merged PEFT adapter")])
def test_an_adapter_goes_as_is_to_hf_and_merged_to_vllm(tmp_path, monkeypatch, backend, given_as):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tasks
    from bench.models import tiny_model
    from bench.plan import Node
    from bench.stages import ModelRef, StageContext, TaskRef
    from bench.stages.evaluate import EvaluateParams, run_evaluate
    from bench.store import StageOutput, atomic_write_json
    from tasks.base import Metric, Scores, Task

    seen = {}

    class Probe(Task):  # records what the harness hands to a model-evaluation task
        name = "probe"
        evaluation = "model"
        metrics = (Metric("probe_score", True, "1 when the checkpoint is what the backend can load"),)
        options = {"backend": ("auto", "hf | vllm | auto")}

        def evaluate_model(self, model, **kwargs):
            path = Path(model)
            seen.update(kwargs, adapter=(path / "adapter_config.json").is_file(),
                        full=(path / "config.json").is_file() and (path / "model.safetensors").is_file())
            loadable = seen["adapter"] if self.backend == "hf" else seen["full"]
            return Scores(metrics={"probe_score": float(loadable), "probe_group_score": 0.5}, per_sample=[],
                          details={"stderr": {"probe_score": 0.25, "unknown_metric": 1.0},
                                   # the evaluator's directions: for a metric the class could not declare,
                                   # and a wrong one for a declared metric (the declaration wins)
                                   "higher_is_better": {"probe_group_score": False, "probe_score": False}})

    monkeypatch.setitem(tasks._registered, "probe", Probe)
    base = tiny_model(save=True)  # loaded by path, so the adapter names its base
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"]))
    adapter.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "adapter")
    train_out = tmp_path / "train"
    atomic_write_json(train_out / "record.json", {"model_path": str(tmp_path / "adapter")})
    node = Node("evaluate", "k", EvaluateParams(ModelRef("tiny"), TaskRef("probe", "1", {"backend": backend}),
                                                limit=2, gen_kwargs={"max_gen_toks": 4}, device="cpu"))
    out = tmp_path / "out"
    out.mkdir()
    if backend == "vllm":  # the task would start vLLM itself; here only the harness's side is tested
        monkeypatch.setattr("bench.backends.vllm_available", lambda: True)
    record = run_evaluate(StageContext(tmp_path), node, {"policy": StageOutput("train", "t", train_out)}, out)
    assert record["given_as"] == given_as and record["metrics"] == {"probe_score": 1.0, "probe_group_score": 0.5}
    assert record["stderr"] == {"probe_score": 0.25}  # only metrics the task reported
    assert seen["limit"] == 2 and seen["device"] == "cpu" and seen["gen_kwargs"] == {"max_gen_toks": 4}
    assert not (out / "merged").exists()  # merged weights were only for the evaluator
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint"] == str(tmp_path / "adapter")
    assert results["directions"] == {"probe_score": True, "probe_group_score": False}


def test_an_undeclared_eval_metric_that_clashes_with_the_row_fails_loudly():
    from bench.runner import add_evaluation

    scores = {"metrics": {"reward": 0.1, "kl": 0.2}, "directions": {"reward": True}}
    add_evaluation(scores, {"metrics": {"acc": 0.5}, "directions": {"acc": True}, "stderr": {"acc": 0.1}}, "probe")
    assert scores == {"metrics": {"reward": 0.1, "kl": 0.2, "acc": 0.5}, "directions": {"reward": True, "acc": True},
                      "stderr": {"acc": 0.1}}
    with pytest.raises(RuntimeError, match=r"eval task 'other' reports metric\(s\) \['acc'\] that this row already"):
        add_evaluation(scores, {"metrics": {"acc": 0.7}}, "other")


# ----------------------------------------------------------------------------------------------
# a real run

def tiny_suite(tmp_path: Path) -> dict:
    return {
        "name": "eval_tasks_test",
        "models": [{"id": "tiny"}],
        "tasks": ["imdb"],
        "eval_tasks": ["reasoning"],
        "task_options": {"imdb": {"source": "builtin", "judge": "sentiment:vader"},
                         "reasoning": {"data_dir": str(DATA), "backend": "hf", "num_fewshot": 0}},
        "methods": {"dpo": {}},
        "seeds": [0],
        "prefdata": {"source": "sample_and_judge", "prompts": 4, "samples_per_prompt": 2, "max_new_tokens": 6,
                     "min_margin": 0.0},
        "train": {"steps": 1, "batch_size": 2, "lr": 1e-3, "peft": "lora",
                  "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, "checkpoint_every": 0},
        "generation": {"backend": "hf", "prompts": 2, "samples_per_prompt": 2, "max_new_tokens": 6,
                       "dtype": "float32"},
        "eval": {"limit": 3, "device": "cpu", "gen_kwargs": {"max_gen_toks": 8}},
        "work_dir": str(tmp_path / "work"),
        "results_dir": str(tmp_path / "results"),
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from bench.runner import run_suite

    tmp = tmp_path_factory.mktemp("eval_tasks")
    suite = validate(tiny_suite(tmp))
    first = run_suite(suite, progress=lambda msg: None)
    again = run_suite(validate(tiny_suite(tmp)), progress=lambda msg: None)
    return suite, first, again


@needs_data
@pytest.mark.slow
def test_policy_and_reference_rows_carry_the_lm_eval_metrics(finished_run):
    from bench.models import resolve_model
    from bench.store import Store

    suite, first, _ = finished_run
    board = json.loads((suite.resolved_results_dir() / "leaderboard.json").read_text())
    rows = {r["label"]: r for r in board["rows"]}
    assert set(rows) == {"dpo", "reference"}
    store = Store(suite.resolved_work_dir())
    for cell in first["plan"].cells:
        done = store.get("evaluate", cell.evals["reasoning"].key)
        results = json.loads((done.path / "results.json").read_text())
        row = rows[cell.label]
        for metric in REASONING_METRICS:
            stats = row["metrics"][metric]
            assert 0.0 <= stats["mean"] <= 1.0
            assert stats["mean"] == results["metrics"][metric]
            if metric in results["stderr"]:  # lm-eval's stderr over the 3 items -> the row's se and CI
                assert stats["se"] == results["stderr"][metric] and stats["ci_over"] == "items"
                half = 1.959963984540054 * stats["se"]
                assert stats["ci"] == pytest.approx([stats["mean"] - half, stats["mean"] + half])
            assert board["metrics"][metric]["higher_is_better"] is True
        # the stored lm-eval per-item records agree with the aggregate (3 ARC items, 3 GSM8K x 2 filters)
        arc = [r["acc"] for r in results["per_sample"] if r["task"] == "arc_challenge"]
        assert len(arc) == 3 and results["metrics"]["arc_challenge_acc"] == pytest.approx(sum(arc) / 3)
        assert len([r for r in results["per_sample"] if r["task"] == "gsm8k"]) == 6
        assert results["details"]["higher_is_better"] == {m: True for m in REASONING_METRICS}  # lm-eval's own
        assert results["details"]["limit"] == 3 and results["details"]["n_shot"] == {
            "pobench_gsm8k": 0, "pobench_arc_challenge": 0}
        # the trainer saves a LoRA policy as its adapter, which goes as is to lm-eval's hf model; the
        # reference is full weights
        assert results["given_as"] == ("PEFT adapter" if cell.method == "dpo" else "full weights")
        if cell.method == "dpo":
            assert results["checkpoint"] == store.get("train", cell.train.key).record["model_path"]
        else:
            assert results["checkpoint"] == resolve_model("tiny").path
    # the sample-scored metrics are still there, and the run records name the evaluation's data source
    assert "reward" in rows["dpo"]["metrics"] and "kl" in rows["dpo"]["metrics"]
    record = json.loads(next((suite.resolved_results_dir() / "runs").glob("*dpo*.json")).read_text())
    assert set(REASONING_METRICS) <= set(record["metrics"])
    assert record["evaluations"]["reasoning"]["task_record"]["data_source"]["kind"] == "local"
    assert record["data_sources"]["evaluate:reasoning"]["kind"] == "local"


@needs_data
@pytest.mark.slow
def test_csv_md_html_have_the_columns_and_check_covers_them(finished_run):
    from bench.check import compare

    suite, _, _ = finished_run
    out = suite.resolved_results_dir()
    with open(out / "leaderboard.csv") as handle:
        table = list(csv.DictReader(handle))
    board = json.loads((out / "leaderboard.json").read_text())
    by_label = {r["label"]: r for r in board["rows"]}
    for line in table:
        expected = by_label[line["label"]]["metrics"]["arc_challenge_acc"]["mean"]
        assert float(line["arc_challenge_acc_mean"]) == pytest.approx(expected, abs=1e-6)
    assert "arc_challenge_acc" in (out / "leaderboard.md").read_text()
    assert "gsm8k_exact_match_strict_match" in (out / "leaderboard.html").read_text()
    # check: the reasoning metrics are compared (same board: ok) and a drop beyond the stderr fails
    same = [c for c in compare(board, board) if c.metric in REASONING_METRICS]
    assert len(same) == 2 * len(REASONING_METRICS) and all(c.status == "ok" for c in same)
    current = by_label["dpo"]["metrics"]["arc_challenge_acc"]
    tolerance = 1.959963984540054 * (current["se"] or 0.0)  # a baseline with se 0: the current se alone
    baseline = copy.deepcopy(board)
    baseline["rows"] = [r for r in baseline["rows"] if r["label"] == "dpo"]
    # far beyond the noise even after Holm over every row x metric of the family (z ~ 6)
    baseline["rows"][0]["metrics"]["arc_challenge_acc"].update(mean=current["mean"] + 3 * tolerance + 0.05, se=0.0)
    verdict = {(c.row, c.metric): c.status for c in compare(baseline, board)}
    assert verdict[(by_label["dpo"]["id"], "arc_challenge_acc")] == "REGRESSED"
    baseline["rows"][0]["metrics"]["arc_challenge_acc"].update(mean=current["mean"] + tolerance / 2)
    verdict = {(c.row, c.metric): c.status for c in compare(baseline, board)}
    assert verdict[(by_label["dpo"]["id"], "arc_challenge_acc")] == "ok"


@needs_data
@pytest.mark.slow
def test_a_rerun_computes_nothing(finished_run):
    suite, first, again = finished_run
    assert first["computed"] == len(first["plan"].nodes) and first["cached"] == 0
    assert again["computed"] == 0 and again["cached"] == len(again["plan"].nodes)
    assert len(again["plan"].by_stage("evaluate")) == 2
    a = json.loads((suite.resolved_results_dir() / "leaderboard.json").read_text())
    assert {r["label"]: r["metrics"] for r in a["rows"]} == {r["label"]: r["metrics"] for r in first["board"]["rows"]}
