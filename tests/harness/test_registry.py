"""bench.registry.Registry (lazy built-ins, entry points, register decorator, errors), the registries
built on it (methods, tasks, judges, generation backends), backend option validation, ``pobench
judges`` / ``pobench backends``, and the tasks.base <-> tasks.judges import circle being gone."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import textwrap
import uuid
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import bench.registry
from bench.registry import Registry, RegistryError

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------
# The registry type
# ------------------------------------------------------------------------------------------------
class Error(ValueError):
    pass


@pytest.fixture
def plugin_modules(tmp_path, monkeypatch):
    """Three throwaway modules on sys.path: a base class, a good subclass, one that fails to import."""
    tag = uuid.uuid4().hex[:8]
    names = {"base": f"reg_base_{tag}", "good": f"reg_good_{tag}", "broken": f"reg_broken_{tag}"}
    (tmp_path / f"{names['base']}.py").write_text("class Base:\n    name = ''\n")
    (tmp_path / f"{names['good']}.py").write_text(
        f"from {names['base']} import Base\n\nclass Good(Base):\n    name = 'good'\n\nclass Stranger:\n    pass\n")
    (tmp_path / f"{names['broken']}.py").write_text("raise RuntimeError('optional dependency missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield names
    for name in names.values():
        sys.modules.pop(name, None)


def make_registry(names: dict[str, str], **kwargs) -> Registry:
    base = importlib.import_module(names["base"]).Base
    table = {"good": f"{names['good']}:Good", "broken": f"{names['broken']}:Thing",
             "stranger": f"{names['good']}:Stranger"}
    return Registry("widget", "pobench.test_widgets", base=base, base_label="Base", error=Error, builtins=table,
                    **kwargs)


def fake_entry_points(monkeypatch, group: str, targets: dict[str, str]) -> None:
    eps = [EntryPoint(name=name, value=value, group=group) for name, value in targets.items()]
    monkeypatch.setattr(bench.registry, "entry_points",
                        lambda *, group: [ep for ep in eps if ep.group == group])


def test_builtins_are_imported_lazily_and_a_broken_one_names_itself(plugin_modules):
    registry = make_registry(plugin_modules)
    assert registry.available() == ["good", "broken", "stranger"]
    assert plugin_modules["good"] not in sys.modules  # listing imports nothing
    assert registry.get_class("good").__name__ == "Good"
    assert plugin_modules["good"] in sys.modules
    with pytest.raises(Error, match=rf"widget 'broken' could not be loaded from '{plugin_modules['broken']}:Thing': "
                                    "RuntimeError: optional dependency missing"):
        registry.get_class("broken")
    assert registry.build("good").name == "good"  # the others still load
    with pytest.raises(Error, match="widget 'stranger': .* is not a Base subclass"):
        registry.get_class("stranger")
    with pytest.raises(Error, match="unknown widget 'nope'; available: good, broken, stranger"):
        registry.get_class("nope")
    registry.builtins["late"] = "no_colon_here"  # the table is kept by reference
    with pytest.raises(Error, match="is not of the form 'module:Attr'"):
        registry.get_class("late")


def test_register_as_function_and_decorator(plugin_modules):
    registry = make_registry(plugin_modules)
    base = importlib.import_module(plugin_modules["base"]).Base

    @registry.register
    class Extra(base):
        name = "extra"

    @registry.register(name="alias")
    class Other(base):
        name = "other"

    assert registry.get_class("extra") is Extra and registry.get_class("alias") is Other
    assert registry.available()[-2:] == ["extra", "alias"]
    shadow = registry.register(type("Shadow", (base,), {"name": "good"}))  # registered names win
    assert registry.get_class("good") is shadow
    with pytest.raises(Error, match="is not a Base subclass with a non-empty `name`"):
        registry.register(type("Nameless", (base,), {}))
    with pytest.raises(Error, match="is not a Base subclass"):
        registry.register(int)
    registry.unregister("extra")
    assert "extra" not in registry and "alias" in registry


def test_entry_points_are_listed_after_builtins_and_loaded_on_demand(plugin_modules, monkeypatch):
    fake_entry_points(monkeypatch, "pobench.test_widgets",
                      {"plugged": f"{plugin_modules['good']}:Good", "good": "ignored:Shadowed"})
    registry = make_registry(plugin_modules)
    registry.register(type("Late", (importlib.import_module(plugin_modules["base"]).Base,), {"name": "late"}))
    assert registry.available() == ["good", "broken", "stranger", "plugged", "late"]
    assert registry.plugins() == {"plugged": f"{plugin_modules['good']}:Good", "good": "ignored:Shadowed"}
    assert registry.get_class("plugged").__name__ == "Good"
    assert registry.target("good") == f"{plugin_modules['good']}:Good"  # a built-in beats a plugin's name
    replaced = make_registry(plugin_modules, plugins=lambda: {"other": f"{plugin_modules['good']}:Good"})
    assert replaced.available() == ["good", "broken", "stranger", "other"]


def test_default_error_and_no_base():
    registry = Registry("thing", "pobench.test_nothing", builtins={"path": "pathlib:Path"})
    assert registry.get_class("path").__name__ == "Path"
    with pytest.raises(RegistryError, match="unknown thing 'x'; available: path"):
        registry.get_class("x")


def test_registry_is_a_leaf_module():
    """bench.registry imports only the standard library (methods/ and tasks/ import it)."""
    code = ("import sys; before = set(sys.modules); import bench.registry; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new - set(sys.stdlib_module_names) - {'bench'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_methods_and_tasks_use_it(monkeypatch):
    import methods
    import tasks

    assert isinstance(methods.REGISTRY, Registry) and isinstance(tasks.REGISTRY, Registry)
    assert methods.REGISTRY.group == methods.ENTRY_POINT_GROUP == "pobench.methods"
    assert tasks.REGISTRY.group == tasks.ENTRY_POINT_GROUP == "pobench.tasks"
    assert tasks.REGISTRY.builtins is tasks.TASK_TABLE and tasks._registered is tasks.REGISTRY.registered
    fake_entry_points(monkeypatch, "pobench.methods", {"dpo_again": "methods.dpo:DPO"})
    assert methods.available()[-1] == "dpo_again" and methods.method_class("dpo_again") is methods.method_class("dpo")
    with pytest.raises(methods.MethodError, match="unknown method 'dop'; available: dpo"):
        methods.get("dop")


# ------------------------------------------------------------------------------------------------
# Judges
# ------------------------------------------------------------------------------------------------
def test_judge_registry_builds_todays_spec_strings(monkeypatch, tmp_path):
    from tasks import judges
    from tasks.errors import TaskError

    assert judges.available() == ["sentiment", "reward_model", "llm", "embedding"]
    assert judges.REGISTRY.group == "pobench.judges"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert judges.build("sentiment").model == "vader"
    assert judges.build("sentiment:auto").model == "vader"
    vader = judges.build("sentiment:vader", include_prompt=False)
    assert isinstance(vader, judges.SentimentJudge) and vader.include_prompt is False
    assert judges.build(f"sentiment:{tmp_path}").model == str(tmp_path)
    reward = judges.build(f"reward_model:{tmp_path}", batch_size=3, device="cpu")
    assert isinstance(reward, judges.RewardModelJudge) and reward.batch_size == 3
    llm = judges.build("llm:http://127.0.0.1:1/v1?model=judge-7b", max_workers=2)
    assert isinstance(llm, judges.PairwiseLLMJudge)
    assert (llm.base_url, llm.model, llm.max_workers) == ("http://127.0.0.1:1/v1", "judge-7b", 2)
    assert judges.build("embedding").model_path is None
    assert judges.build("minilm:/some/dir").model_path == "/some/dir"
    with pytest.raises(TaskError, match=r"unknown judge spec 'oracle'; use one of: sentiment\[:auto\|vader"):
        judges.build("oracle")
    with pytest.raises(TaskError, match="needs a model: reward_model:<hub id or local dir>"):
        judges.build("reward_model")
    with pytest.raises(TaskError, match=r"use llm:<base_url>\?model="):
        judges.build("llm:http://127.0.0.1:1/v1")


def test_judge_resolution_lives_in_tasks_judges():
    from tasks import judges
    from tasks.errors import TaskError

    obj = judges.SentimentJudge("vader")
    assert judges.resolve(obj) is obj
    mapped = judges.resolve({"spec": "sentiment:vader", "batch_size": 4}, where="task 'x'")
    assert mapped.batch_size == 4
    with pytest.raises(TaskError, match="task 'x': a judge mapping needs a 'spec' key"):
        judges.resolve({"model": "m"}, where="task 'x'")
    with pytest.raises(TaskError, match=r"task 'x': bad judge options \['colour'\]"):
        judges.resolve({"spec": "sentiment:vader", "colour": 1}, where="task 'x'")
    with pytest.raises(TaskError, match="judge must be a spec string, a mapping or a Judge, got int"):
        judges.resolve(3)
    hinted = judges.resolve("llm:http://127.0.0.1:1/v1?model=m", task_hint="Prefer the shorter one.")
    assert hinted.task_hint == "Prefer the shorter one."


def test_judge_plugins_by_entry_point_and_decorator(monkeypatch):
    from tasks import judges

    class Oracle(judges.PointwiseJudge):
        name = "oracle"
        spec_name = "oracle"
        spec = "oracle[:<bias>]"
        description = "scores by length"
        spec_sets = ("bias",)

        def __init__(self, bias: float = 0.0, scale: float = 1.0) -> None:
            self.bias, self.scale = bias, scale

        @classmethod
        def from_spec(cls, argument, **kwargs):
            return cls(bias=float(argument or 0), **kwargs)

        def score(self, prompts, completions):
            return [self.scale * len(c) + self.bias for c in completions]

    monkeypatch.setitem(judges.REGISTRY.registered, "oracle", Oracle)  # what @judges.register does, undone after
    judge = judges.build("oracle:2", scale=0.5)
    assert judge.score(["p"], ["abcd"]) == [4.0]
    assert judges.describe("oracle")["options"] == {"scale": 1.0}
    assert judges.register(Oracle) is Oracle
    judges.REGISTRY.unregister("oracle")
    fake_entry_points(monkeypatch, "pobench.judges", {"vader2": "tasks.judges.sentiment:SentimentJudge"})
    assert judges.available()[-1] == "vader2"
    assert isinstance(judges.build("vader2:vader"), judges.SentimentJudge)


def test_judges_command_lists_descriptions_and_options(capsys):
    import json

    from bench.commands import judges as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())

    def run(*argv):
        args = parser.parse_args(["judges", *argv])
        return args.func(args)

    assert run() == 0
    out = capsys.readouterr().out
    for name in ("sentiment", "reward_model", "llm", "embedding"):
        assert f"\n{name} " in f"\n{out}"
    assert "spec: llm:<base_url>?model=<served model name>" in out
    assert "options: api_key=None, task_hint='', max_tokens=8" in out and "(the spec sets base_url, model)" in out
    assert "(alias: minilm)" in out and out.strip().splitlines()[-1].startswith("4 judges")
    assert run("minilm", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["embedding"] and rows[0]["options"]["tie_tolerance"] == 1e-4
    assert run("nope") == 2
    assert "unknown judge(s) ['nope']" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# The import circle
# ------------------------------------------------------------------------------------------------
def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("first,second", [("tasks.judges", "tasks.base"), ("tasks.base", "tasks.judges"),
                                          ("tasks.judges.sentiment", "tasks"), ("tasks.errors", "tasks.judges.llm")])
def test_either_import_order_works_in_a_fresh_interpreter(first, second):
    done = _python(f"""
        import importlib
        importlib.import_module({first!r}); importlib.import_module({second!r})
        import tasks, tasks.judges
        assert tasks.get("imdb", judge="sentiment:vader").judge.model == "vader"
        assert tasks.base.TaskError is tasks.errors.TaskError is tasks.judges.base.TaskError
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_judges_and_task_base_do_not_import_each_other():
    """With the ``tasks`` package's __init__ bypassed, judges load without tasks.base and tasks.base
    loads without judges: neither half can see the other half-initialised."""
    stub = f"""
        import sys, types
        pkg = types.ModuleType("tasks"); pkg.__path__ = [{str(REPO / 'tasks')!r}]; sys.modules["tasks"] = pkg
    """
    judges_alone = _python(stub + """
        import tasks.judges as judges
        for name in judges.available():
            judges.judge_class(name)
        judges.build("sentiment:vader"); judges.build("embedding")
        assert "tasks.base" not in sys.modules, "tasks.judges imported tasks.base"
        print("ok")
    """)
    assert judges_alone.returncode == 0 and judges_alone.stdout.strip() == "ok", judges_alone.stderr
    base_alone = _python(stub + """
        import tasks.base
        assert not any(m.startswith("tasks.judges") for m in sys.modules), "tasks.base imported tasks.judges"
        print("ok")
    """)
    assert base_alone.returncode == 0 and base_alone.stdout.strip() == "ok", base_alone.stderr


# ------------------------------------------------------------------------------------------------
# Generation backends
# ------------------------------------------------------------------------------------------------
def test_backend_registry_and_option_validation(monkeypatch):
    from bench import backends
    from bench.backends import BackendError, validate_backend_options

    assert backends.available_backends() == ["hf", "vllm", "openai"]
    assert backends.REGISTRY.group == "pobench.backends"
    hf_defaults = {"batch_size": 64, "prefill_once_per_prompt": False}
    assert validate_backend_options("hf", {}) == hf_defaults
    assert validate_backend_options("hf", {"batch_size": 8}) == {**hf_defaults, "batch_size": 8}
    assert validate_backend_options("openai", {"base_url": "http://127.0.0.1:8000/v1"})["api_key"] == "EMPTY"
    assert validate_backend_options("vllm", {"max_model_len": 2048})["enforce_eager"] is True
    cases = [
        ("hf", {"batch_size": 0}, r"batch_size: Input should be greater than or equal to 1 \(got 0\)"),
        ("hf", {"batch_size": "many"}, "batch_size: Input should be a valid integer"),
        ("hf", {"colour": 1}, r"colour: not an option of the hf backend; its options: batch_size \(default 64\)"),
        ("openai", {}, "base_url or serve_python: the openai backend needs base_url"),
        ("openai", {"base_url": "localhost:8000"}, r"base_url: use an http\(s\) URL .*\(got 'localhost:8000'\)"),
        ("vllm", {"enforce_eager": "sometimes"}, "enforce_eager: Input should be a valid boolean"),
        ("auto", {"base_url": "http://x/v1"}, "base_url: not an option of the backends auto may pick .*it is an "
                                              r"option of \['openai'\]: set generation.backend"),
        ("tgi", {}, r"unknown generation backend 'tgi'; choose one of \['hf', 'vllm', 'openai'\] or auto"),
    ]
    for name, options, message in cases:
        with pytest.raises(BackendError, match=message):
            validate_backend_options(name, options)
    assert validate_backend_options("auto", {"batch_size": 4, "enforce_eager": False}) == {
        "batch_size": 4, "enforce_eager": False}


class FakeHF:
    from bench.backends.hf import HFOptions as options_model

    name = "hf"
    description = "records what it was built with"

    def __init__(self, model_path, dtype="bfloat16", **options):
        self.model_path, self.dtype, self.options = model_path, dtype, options


def test_get_backend_takes_its_options(monkeypatch):
    from bench import backends
    from bench.backends import BackendError, get_backend

    monkeypatch.setitem(backends.REGISTRY.registered, "hf", FakeHF)  # registered names shadow built-ins
    monkeypatch.setattr(backends, "vllm_available", lambda: False)
    built = get_backend("hf", "/m", dtype="float32", options={"batch_size": 3})
    assert (built.model_path, built.dtype, built.options) == ("/m", "float32", {"batch_size": 3,
                                                                                "prefill_once_per_prompt": False})
    assert get_backend("hf", "/m").options == {"batch_size": 64, "prefill_once_per_prompt": False}
    # auto: the options of the backend picked are used, the other candidate's are left out
    assert get_backend("auto", "/m", options={"batch_size": 5, "enforce_eager": False}).options == {
        "batch_size": 5, "prefill_once_per_prompt": False}
    with pytest.raises(BackendError, match="colour: not an option of the hf backend"):
        get_backend("hf", "/m", options={"colour": 1})
    with pytest.raises(TypeError):
        get_backend("hf", "/m", batch_size=7)  # backend settings go in options={...}


def test_backends_command(capsys):
    from bench.commands import backends as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["backends"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "batch_size (default 64)" in out and "api_key (default 'EMPTY')" in out and "auto = " in out
