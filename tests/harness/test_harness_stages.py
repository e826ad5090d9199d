"""Typed stages: per-method overrides reach the stages that use them; one prompt format per policy;
stage keys follow what changes outputs and only that."""
from __future__ import annotations

import pytest

from bench.config import validate
from bench.plan import build_plan


def minimal(**extra):
    return {"name": "t", "methods": {"dpo": {}}, **extra}


def nodes_of(plan, stage, method=None):
    return [n for n in plan.nodes if n.stage == stage and (method is None or method in n.label)]


@pytest.mark.parametrize("chat_template", [True, False, None])
def test_sampling_and_kl_use_the_prompt_format_the_policy_trains_with(chat_template):
    """Bug (before): `train.chat_template: null` trained WITH the template while sampling and KL used
    plain text. Now the train config's prompt format is in every node that encodes prompts."""
    suite = validate(minimal(train={"chat_template": chat_template, "max_prompt_length": 100},
                             methods={"dpo": {}, "ipo": {"train": {"chat_template": not chat_template}}}))
    plan = build_plan(suite)
    for cell in plan.cells:
        train_format = (cell.train.params.train if cell.train else suite.train).prompt_format()
        generate = cell.score.deps["samples"]
        assert generate.params.prompt_format == train_format
        assert cell.score.params.prompt_format == train_format
        assert train_format.max_prompt_length == 100
    ipo = next(c for c in plan.cells if c.method == "ipo")
    assert ipo.score.params.prompt_format.chat_template is (not chat_template)  # the method's own override
    (prefdata,) = nodes_of(plan, "prefdata")
    assert prefdata.params.prompt_format == suite.train.prompt_format()


def test_a_methods_generation_override_reaches_its_generate_stage(tmp_path, monkeypatch):
    """Bug (before): make_backend read the suite's generation section, dropping a method's own
    backend options (batch_size, base_url)."""
    from bench.stages import StageContext
    from bench.stages.evaluate import run_generate
    from tasks.base import Sample

    suite = validate(minimal(methods={"dpo": {"generation": {"backend": "hf", "backend_options": {"batch_size": 3},
                                                             "max_new_tokens": 5}}},
                             generation={"backend": "hf", "prompts": 2, "samples_per_prompt": 1},
                             task_options={"imdb": {"source": "builtin"}}))
    plan = build_plan(suite)
    dpo = next(c for c in plan.cells if c.method == "dpo")
    ref = next(c for c in plan.cells if c.method == "reference")
    generate = dpo.score.deps["samples"]
    assert generate.params.generation.backend_options == {"batch_size": 3, "prefill_once_per_prompt": False}
    assert ref.score.deps["samples"].params.generation.backend_options == {"batch_size": 64,
                                                                            "prefill_once_per_prompt": False}
    # backend options change how, not what: they are not part of the key
    other = build_plan(validate(minimal(methods={"dpo": {"generation": {"backend": "hf", "max_new_tokens": 5,
                                                                         "backend_options": {"batch_size": 9}}}},
                                        generation={"backend": "hf", "prompts": 2, "samples_per_prompt": 1},
                                        task_options={"imdb": {"source": "builtin"}})))
    assert next(c for c in other.cells if c.method == "dpo").score.deps["samples"].key == generate.key

    seen = {}

    class FakeBackend:
        name = "fake"
        stats = {"generated_tokens": 0}

        def generate(self, prompts, sampling, seed=0, prompt_format=None):
            seen.update(max_new_tokens=sampling.max_new_tokens, prompt_format=prompt_format)
            return [Sample(prompt_id=p.id, index=0, prompt=p.text, completion=" ok") for p in prompts]

        def close(self):
            pass

    def fake_get_backend(name, model_path, *, dtype, options=None, sampled_tokens=None):
        seen.update(name=name, options=dict(options or {}), sampled_tokens=sampled_tokens)
        return FakeBackend()

    monkeypatch.setattr("bench.backends.get_backend", fake_get_backend)
    monkeypatch.setattr("bench.stages.evaluate.policy_path", lambda model, inputs, step=None: "unused")
    record = run_generate(StageContext(tmp_path), generate, {}, tmp_path)
    options = {"batch_size": 3, "prefill_once_per_prompt": False}
    assert seen["options"] == options and seen["max_new_tokens"] == 5 and seen["name"] == "hf"
    assert seen["sampled_tokens"] == 2 * 1 * 5  # prompts x samples x max_new_tokens: what auto weighs
    assert seen["prompt_format"] == dpo.train.params.train.prompt_format()
    assert record["backend_options"] == options and record["samples"] == 2


def test_keys_ignore_bookkeeping_and_follow_what_is_trained():
    base = build_plan(validate(minimal()))
    key = lambda plan: next(n.key for n in plan.nodes if n.stage == "train")  # noqa: E731
    assert key(build_plan(validate(minimal(train={"checkpoint_every": 7, "log_every": 3})))) == key(base)
    assert key(build_plan(validate(minimal(methods={"dpo": {"beta": 0.1}})))) == key(base)  # 0.1 is the default
    assert key(build_plan(validate(minimal(methods={"dpo": {"beta": 0.2}})))) != key(base)
    assert key(build_plan(validate(minimal(train={"max_prompt_length": 64})))) != key(base)


def test_every_node_carries_its_stages_params_type():
    from bench.config import load_suite
    from bench.stages import stage

    plan = build_plan(load_suite("smoke"))
    assert {n.stage for n in plan.nodes} == {"prefdata", "prep", "train", "generate", "score"}
    for node in plan.nodes:
        assert isinstance(node.params, stage(node.stage).params)
