"""Suite config: validation errors name the field and the allowed values; overrides; shipped suites."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import ConfigError, apply_override, load_suite, parse_override, validate
from bench.plan import build_plan, method_label

REPO = Path(__file__).resolve().parents[2]
SUITES = sorted((REPO / "configs").rglob("*.yaml"))


def minimal(**extra):
    return {"name": "t", "methods": {"dpo": {}}, **extra}


@pytest.mark.parametrize("data, expected", [
    (minimal(train={"lr_schedule": "cosin"}),
     "train.lr_schedule: 'cosin' is not one of ['constant', 'linear', 'cosine', 'warmup_constant']"),
    (minimal(train={"optimizer": "sgd"}), "train.optimizer: 'sgd' is not one of ['adamw', 'rmsprop']"),
    (minimal(prefdata={"source": "dataset", "pairs": "all"}),
     "prefdata.pairs: all pairs the judged samples of source sample_and_judge, not source dataset"),
    (minimal(trian={}), "trian: unknown field; allowed fields: ['name'"),
    (minimal(train={"steps": "ten"}), "train.steps: expected an integer, got 'ten'"),
    (minimal(train={"steps": -1}), "train.steps: -1 is below the minimum 0"),
    (minimal(train={"lora": {"rank": 8}}), "train.lora.rank: unknown field; allowed fields of train.lora: ['r'"),
    (minimal(generation={"backend": "tgi"}), "generation.backend: 'tgi' is not one of ['auto', 'hf', 'vllm', 'openai']"),
    ({"name": "t", "methods": {"dpoo": {}}}, "methods.dpoo: unknown method 'dpoo'; available: ['dpo'"),
    ({"name": "t", "methods": {"dpo": {"betta": 0.1}}}, "methods.dpo.betta: unknown hyperparameter of 'dpo'; allowed: ['beta']"),
    ({"name": "t", "methods": {"dpo": {"beta": [0.1, -1.0]}}}, "beta must be > 0"),
    ({"name": "t", "methods": {"dpo": {"beta": []}}}, "methods.dpo.beta: an empty list sweeps nothing"),
    ({"name": "t", "methods": {"dpo": {"train": {"lrr": 1}}}}, "methods.dpo.train.lrr: unknown field"),
    (minimal(tasks=["imbd"]), "tasks[0]: unknown task 'imbd'; available: ['imdb'"),
    (minimal(seeds=[0, 0]), "seeds: duplicate seeds in [0, 0]"),
    ({"methods": {"dpo": {}}}, "name: required field is missing"),
    (minimal(generation={"backend": "openai"}),
     "generation.backend_options.base_url or serve_python: the openai backend needs base_url"),
    (minimal(generation={"backend_options": {"batch_sise": 8}}), "generation.backend_options.batch_sise"),
    (minimal(methods={"dpo": {"generation": {"backend_options": {"batch_size": 0}}}}),
     "methods.dpo.generation.backend_options.batch_size"),
    (minimal(preparation={"tis_weight": {}}), "preparation.tis_weight: unknown preparation step; available: "
                                              "['tis_weights']"),
    (minimal(preparation={"tis_weights": {"estimator": "x"}}),
     "preparation.tis_weights.estimator: 'x' is not one of ['dpo_contrastive', 'prompt_contrastive']"),
    (minimal(train={"max_length": 64, "max_prompt_length": 64}), "train.max_prompt_length: 64 must be below"),
    (minimal(train={"seed": 3}), "train.seed: set by the suite (from `seeds`)"),
    (minimal(train={"peft": "qlora"}), "train.peft: 'qlora' is not one of ['lora', 'full']"),
    (minimal(task_options={"hh": {}}), "task_options.hh: not one of this suite's tasks ['imdb']"),
    (minimal(tasks=["reasoning"]), "tasks[0]: task 'reasoning' evaluates checkpoints"),
])
def test_errors_name_field_and_allowed_values(data, expected):
    with pytest.raises(ConfigError) as info:
        validate(data, source="suite.yaml")
    message = str(info.value)
    assert message.startswith("suite.yaml: ")
    assert expected in message


def test_valid_config_defaults_and_grid():
    suite = validate(minimal(methods={"dpo": {"beta": [0.1, 0.5]}, "ipo": {}}, seeds=[0, 1]))
    # one set of defaults: the suite's train section IS the trainer's PreferenceTrainConfig
    from bench.train import PreferenceTrainConfig

    trainer = PreferenceTrainConfig()
    assert suite.train.steps == trainer.steps and suite.train.lr == trainer.lr == 5e-6
    assert suite.train.lr_schedule == trainer.lr_schedule and suite.train.chat_template is trainer.chat_template
    dpo = suite.method_specs[0]
    assert dpo.hyperparameter_points() == [{"beta": 0.1}, {"beta": 0.5}]
    assert method_label(dpo, {"beta": 0.5}) == "dpo(beta=0.5)"
    assert method_label(suite.method_specs[1], {}) == "ipo"


def test_yaml_scientific_notation_without_dot_is_a_number(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmethods: {dpo: {}}\ntrain: {lr: 5e-4}\n")  # YAML 1.1 reads 5e-4 as a string
    assert load_suite(path).train.lr == pytest.approx(5e-4)


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmethods: {dpo: {beta: 0.1}, ipo: {}}\n")
    suite = load_suite(path, ["train.steps=3", "seeds=[1,2]", "methods.dpo.beta=[0.1,0.2]",
                              "generation.backend=hf", "train.lora.target_modules=[q_proj]"])
    assert suite.train.steps == 3 and suite.seeds == [1, 2]
    assert suite.method_specs[0].grid == {"beta": [0.1, 0.2]}
    assert suite.train.lora.target_modules == ("q_proj",)
    only = load_suite(path, ["methods=ipo"])
    assert [s.name for s in only.method_specs] == ["ipo"]
    with pytest.raises(ConfigError, match=r"^override train.stepz=3: train.stepz: unknown field"):
        load_suite(path, ["train.steps=3", "train.stepz=3"])  # the override is named, not the file
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.steps")


def test_apply_override_creates_sections():
    data = {"name": "x"}
    apply_override(data, "executor.kind", "ray")
    assert data == {"name": "x", "executor": {"kind": "ray"}}


@pytest.mark.parametrize("path", SUITES, ids=[str(p.relative_to(REPO)) for p in SUITES])
def test_every_shipped_suite_validates_and_plans(path):
    suite = load_suite(path)
    plan = build_plan(suite)
    assert plan.cells, f"{path} plans no run"
    methods = {c.method for c in plan.cells}
    assert methods - {"reference"}, f"{path} has no method"


SEED_METHODS = {"dpo", "tdpo1", "tdpo2", "tis_dpo", "bcr", "sparsepo_mapo", "sparsepo"}
BASELINES = {"ipo", "simpo", "cdpo", "dpop"}


def test_default_suite_has_every_seed_method_and_baselines_share_its_stages():
    import methods

    default = load_suite(REPO / "configs" / "default.yaml")
    baselines = load_suite(REPO / "configs" / "baselines.yaml")
    assert {s.name for s in default.method_specs} == SEED_METHODS
    assert {s.name for s in baselines.method_specs} == BASELINES | {"dpo"}
    assert SEED_METHODS | BASELINES == set(methods.available()[:11])
    assert default.reference_row and baselines.reference_row
    assert default.models[0].id == "smollm2-135m"
    a, b = build_plan(default), build_plan(baselines)
    keys = lambda plan: {(n.stage, n.label): n.key for n in plan.nodes}  # noqa: E731
    shared = {k for k in keys(a) if k in keys(b)}
    # same budget and data: the prefdata, the reference row and DPO are computed once for both
    assert {label for _, label in shared} >= {"prefdata imdb", "generate reference s0", "train dpo s0",
                                               "score dpo s0"}
    assert all(keys(a)[k] == keys(b)[k] for k in shared)


def test_work_estimate_counts_every_stage_once():
    from bench.plan import estimate_work

    work = estimate_work(build_plan(load_suite(REPO / "configs" / "default.yaml")))
    # 7 methods x 14 steps + TIS-DPO's pi_minus (its pi_plus is the suite's DPO): 112 steps; 64 x 4
    # preference samples + (reference + 7 methods x 2 checkpoints) x 128 eval samples; KL for the 14
    # evaluated policies (the reference's is 0 by construction)
    assert work == {"train_steps": 112, "sampled_sequences": 64 * 4 + 15 * 128, "kl_sequences": 14 * 128}


def test_cache_keys_follow_inputs():
    base = validate(minimal(methods={"dpo": {}, "ipo": {}}))
    changed = validate(minimal(methods={"dpo": {}, "ipo": {}}, train={"lr": 1e-4}))
    keys = lambda plan, stage: sorted(n.key for n in plan.nodes if n.stage == stage)  # noqa: E731
    a, b = build_plan(base), build_plan(changed)
    assert keys(a, "prefdata") == keys(b, "prefdata")  # the data does not depend on the trainer
    assert set(keys(a, "train")).isdisjoint(keys(b, "train"))
    method_scores = lambda plan: {c.score.key for c in plan.cells if c.method != "reference"}  # noqa: E731
    assert method_scores(a).isdisjoint(method_scores(b))  # downstream of training re-keys too
    ref_a = [c.score.key for c in a.cells if c.method == "reference"]
    ref_b = [c.score.key for c in b.cells if c.method == "reference"]
    assert ref_a == ref_b  # the reference row does not depend on the training budget


def test_tis_dpo_reuses_the_suites_dpo_policy_by_key():
    """TIS-DPO declares its preparation step; the step asks for DPO runs, and the planner hands it the
    suite's own DPO node when the key matches (same beta, recipe, data and seed), else plans its own."""
    suite = validate(minimal(methods={"dpo": {"beta": [0.1, 0.5]}, "tis_dpo": {}}))
    plan = build_plan(suite)
    prep = plan.by_stage("prep")
    assert len(prep) == 1 and prep[0].params.step == "tis_weights"
    dpo_train = next(c.train for c in plan.cells if c.label == "dpo(beta=0.1)")
    assert prep[0].deps["pi_plus"] is dpo_train
    assert prep[0].deps["pi_minus"].params.swap_pairs and prep[0].deps["pi_minus"].params.method == "dpo"
    # another DPO beta for the contrastive pair: its own pi_plus, not a suite row
    other = build_plan(validate(minimal(methods={"dpo": {}, "tis_dpo": {}},
                                        preparation={"tis_weights": {"beta": 0.2}})))
    (prep,) = other.by_stage("prep")
    suite_dpo = next(c.train for c in other.cells if c.method == "dpo")
    assert prep.deps["pi_plus"] is not suite_dpo and prep.deps["pi_plus"].params.hparams == {"beta": 0.2}
    # without DPO in the suite TIS-DPO still plans (it used to be a config error)
    alone = build_plan(validate(minimal(methods={"tis_dpo": {}})))
    assert [n.params.method for n in alone.by_stage("train")] == ["dpo", "dpo", "tis_dpo"]


def test_the_config_planner_and_stages_name_no_method():
    """Issue: the harness must not branch on a method's name (a preparation step may name what it trains)."""
    import re

    import methods

    names = [n for n in methods.available() if n not in ("slic_hinge", "rank_hinge")]
    files = [*(REPO / "bench" / "config").glob("*.py"), REPO / "bench" / "plan.py",
             *[p for p in (REPO / "bench" / "stages").glob("*.py") if p.name != "tis_weights.py"]]
    for path in files:
        # a default VALUE of a report option (the contrasts' baseline, DPO) is data, not a branch
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines()
                         if "baseline_method" not in line)
        for name in names:
            assert not re.search(rf"[\"']{name}[\"']", code), f"{path.name} names method {name!r}"


def test_docs_field_table_is_generated_from_the_schema():
    """docs/harness.md "Every field" is bench.config.field_table() verbatim (regenerate it when this fails)."""
    from bench.config.loader import field_table

    assert field_table() in (REPO / "docs" / "harness.md").read_text()
