"""Suite configuration: the YAML schema, up-front validation and dotted command-line overrides.

A suite names model(s), task(s), methods with hyperparameter grids, seeds, and the budgets of every
stage. Everything is validated before any work starts; an error names the file, the dotted field
and the allowed values::

    configs/default.yaml: train.optimizer: 'adamw2' is not one of ['adamw', 'sgd']

A method entry maps hyperparameter names to a value or to a list of values (a sweep, e.g. a beta
sweep for the reward-vs-KL frontier); the reserved keys ``train``, ``generation`` and ``label`` hold
per-method overrides of the suite's sections::

    methods:
      dpo: {beta: [0.05, 0.1, 0.5]}
      sparsepo: {beta: 0.8, train: {lr: 1.0e-6}}

Overrides (``pobench run SUITE train.steps=5 methods=dpo,ipo seeds=[0,1]``) are parsed as YAML
values and applied to the raw mapping before validation, so they are checked like the file.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RESERVED_METHOD_KEYS = ("train", "generation", "label")
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A suite file or override is invalid; the message names the file, field and allowed values."""


def choice(*values: Any, default: Any, help: str = "") -> Any:
    return field(default=default, metadata={"choices": values, "help": help})


def doc(default: Any = dataclasses.MISSING, help: str = "", factory: Any = None, minimum: float | None = None) -> Any:
    meta = {"help": help, "minimum": minimum}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """The base policy (and reference before SFT). ``id`` is resolved by ``bench.models.load_model``."""

    id: str = doc("smollm2-135m", "short model id, hub repo id, or local directory")
    dtype: str = choice("float32", "bfloat16", "float16", "auto", default="float32",
                        help="weights dtype for training (sampling dtype is generation.dtype)")
    revision: str | None = doc(None, "hub revision (online only)")


@dataclass
class LoraConfig:
    r: int = doc(16, "LoRA rank", minimum=1)
    alpha: int = doc(32, "LoRA alpha", minimum=1)
    dropout: float = doc(0.0, "LoRA dropout", minimum=0)
    target_modules: list[str] = doc(help="module names to adapt",
                                    factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    """The preference-optimisation budget, identical for every method unless a method overrides it.

    Field names follow ``bench.train.config.PreferenceTrainConfig`` (the trainer's own config).
    """

    steps: int = doc(20, "optimizer steps (0 = use epochs)", minimum=0)
    epochs: float = doc(1.0, "epochs over the preference pairs when steps == 0", minimum=0)
    batch_size: int = doc(8, "pairs per optimizer micro-step", minimum=1)
    grad_accum: int = doc(1, "gradient-accumulation micro-steps per optimizer step", minimum=1)
    lr: float = doc(5e-4, "peak learning rate", minimum=0)
    warmup_steps: int = doc(0, "linear warm-up steps", minimum=0)
    weight_decay: float = doc(0.0, "AdamW weight decay", minimum=0)
    lr_schedule: str = choice("constant", "linear", "cosine", default="constant")
    max_grad_norm: float = doc(1.0, minimum=0)
    max_length: int = doc(512, "max prompt+response tokens per sequence", minimum=8)
    max_prompt_length: int = doc(256, "max prompt tokens", minimum=1)
    peft: str = choice("lora", "full", default="lora", help="LoRA adapters or full fine-tuning")
    lora: LoraConfig = doc(factory=LoraConfig)
    precision: str = choice("fp32", "bf16", default="fp32", help="autocast dtype for forward/backward "
                            "(bf16 + LoRA: frozen base weights in bf16, adapters and loss math in fp32)")
    attn_implementation: str | None = doc(None, "transformers attention kernel for training (None = the "
                                          "model's default; eager has the faster backward for short CPU batches)")
    chat_template: bool | None = doc(False, "None = the tokenizer's template when it has one; False = plain text")
    checkpoint_every: int = doc(5, "optimizer steps between resumable checkpoints (0 = none)", minimum=0)
    method_weight_decay: float = doc(0.01, "weight decay of method modules (SparsePO mask heads)", minimum=0)


@dataclass
class SFTConfig:
    """Optional supervised fine-tuning of the base model on the task's SFT data (the reference)."""

    enabled: bool = doc(False, "run SFT before preference optimisation")
    steps: int = doc(0, "optimizer steps (0 = use epochs)", minimum=0)
    epochs: float = doc(1.0, minimum=0)
    batch_size: int = doc(8, minimum=1)
    lr: float = doc(2e-5, minimum=0)
    max_examples: int | None = doc(None, "cap on SFT examples (None = all)")
    peft: str = choice("lora", "full", default="full")


@dataclass
class PrefDataConfig:
    """How preference pairs are obtained.

    ``dataset``: the task's own (chosen, rejected) pairs. ``sample_and_judge``: sample
    ``samples_per_prompt`` completions per train prompt from the reference, score them with the
    task's judge, keep best-vs-worst pairs whose score margin exceeds ``min_margin``.
    ``pairwise_ranking``: rank the samples with the task's pairwise judge (BCR's iterative ranking).
    """

    source: str = choice("task_default", "dataset", "sample_and_judge", "pairwise_ranking",
                         default="task_default")
    prompts: int | None = doc(128, "train prompts (or pairs for `dataset`); null = all", minimum=1)
    samples_per_prompt: int = doc(4, minimum=2)
    max_new_tokens: int = doc(32, minimum=1)
    temperature: float = doc(1.0, minimum=0)
    top_p: float = doc(1.0, minimum=0)
    min_margin: float = doc(0.2, "minimum judge-score margin between chosen and rejected", minimum=0)
    data_seed: int = doc(0, "seed of the data draw and of the reference samples (shared by every run)")


@dataclass
class TISConfig:
    """TIS-DPO token-weight estimation (the ``prep`` stage; ``bench.train.estimate_tis_weights``)."""

    estimator: str = choice("dpo_contrastive", "prompt_contrastive", default="dpo_contrastive",
                            help="DPO vs reverse-DPO models (official code) or good/bad system prompts")
    positive: str = choice("suite_dpo", "train", default="suite_dpo",
                           help="suite_dpo: reuse this suite's DPO policy as pi_plus; train: train its own")
    transform: str = choice("rank", "clip", "exp", default="rank", help="raw scores -> weights")
    transform_options: dict[str, Any] = doc(factory=dict, help="e.g. {low: 0.7, high: 1.3}")


@dataclass
class GenerationConfig:
    """Evaluation sampling on held-out prompts (shared by the reference row and every policy)."""

    backend: str = choice("auto", "hf", "vllm", "openai", default="auto",
                          help="auto = vllm when importable, else hf")
    prompts: int | None = doc(128, "held-out eval prompts; null = all", minimum=1)
    samples_per_prompt: int = doc(2, minimum=1)
    max_new_tokens: int = doc(32, minimum=1)
    temperature: float = doc(1.0, "0 = greedy", minimum=0)
    top_p: float = doc(1.0, minimum=0)
    dtype: str = choice("bfloat16", "float32", "float16", "auto", default="bfloat16")
    batch_size: int = doc(64, "hf backend: sequences per forward", minimum=1)
    # openai backend: an existing server, or a `vllm serve` that pobench starts from another Python
    base_url: str | None = doc(None, "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    serve_python: str | None = doc(None, "python of a vLLM env: pobench starts `vllm serve` on loopback")
    api_key: str = doc("EMPTY")


@dataclass
class ScoreConfig:
    kl: bool = doc(True, "KL(policy || reference) per sequence by teacher forcing")
    kl_budget: float = doc(5.0, "flag runs whose mean KL exceeds this many nats/seq", minimum=0)
    kl_batch_size: int = doc(32, minimum=1)
    kl_dtype: str = choice("float32", "bfloat16", default="float32",
                           help="teacher-forcing weights dtype (log-softmax always in float32)")


@dataclass
class EvalConfig:
    """Model-evaluation tasks (``eval_tasks``): how every trained policy and the reference are evaluated."""

    limit: int | None = doc(None, "items per benchmark (e.g. per lm-eval task); null = all. Limited "
                            "results are not comparable with published numbers", minimum=1)
    device: str = choice("auto", "cpu", "cuda", default="auto", help="auto = cuda when available, else cpu")
    gen_kwargs: dict[str, Any] = doc(factory=dict, help="generation overrides for evaluators that take them "
                                     "(lm-eval gen_kwargs, e.g. {max_gen_toks: 64}); {} = each benchmark's own")


@dataclass
class ExecutorConfig:
    kind: str = choice("local", "ray", default="local")
    address: str | None = doc(None, "ray: cluster address (None = start a local cluster)")
    num_cpus: float = doc(1.0, "ray: CPUs requested per grid cell", minimum=0)
    num_gpus: float = doc(0.0, "ray: GPUs requested per grid cell", minimum=0)


@dataclass
class PaperValue:
    """A published number shown as its own labelled leaderboard row (never mixed with ours)."""

    method: str = doc(help="row label, e.g. 'dpo (paper)'")
    metric: str = doc(help="metric name as in the leaderboard")
    value: float = doc(help="the published value")
    source: str = doc(help="citation: paper, table")
    task: str | None = doc(None, "task name (default: the suite's first task)")
    note: str = doc("", "e.g. 'GPT-2-large, not comparable in scale'")


@dataclass
class MethodSpec:
    """One method of the suite: hyperparameter grid plus optional per-method overrides."""

    name: str
    grid: dict[str, list[Any]]
    train: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def hyperparameter_points(self) -> list[dict[str, Any]]:
        """The Cartesian product of the grid, in file order (one dict per training run)."""
        points: list[dict[str, Any]] = [{}]
        for key, values in self.grid.items():
            points = [{**p, key: v} for p in points for v in values]
        return points


@dataclass
class SuiteConfig:
    name: str = doc(help="suite name: results go to results/<name>/")
    description: str = doc("")
    models: list[ModelConfig] = doc(factory=lambda: [ModelConfig()])
    tasks: list[str] = doc(factory=lambda: ["imdb"])
    task_options: dict[str, Any] = doc(factory=dict, help="task name -> keyword arguments of tasks.get "
                                       "(source, judge, data_dir and the task's own options)")
    eval_tasks: list[str] = doc(factory=list, help="model-evaluation tasks (evaluation = model, e.g. reasoning) "
                                "run on every trained policy and the reference; their metrics are extra columns")
    methods: dict[str, Any] = doc(factory=dict, help="method name -> {hyperparameter: value | [values]}")
    reference_row: bool = doc(True, "add the reference policy as a leaderboard row")
    seeds: list[int] = doc(factory=lambda: [0])
    sft: SFTConfig = doc(factory=SFTConfig)
    prefdata: PrefDataConfig = doc(factory=PrefDataConfig)
    tis: TISConfig = doc(factory=TISConfig)
    train: TrainConfig = doc(factory=TrainConfig)
    generation: GenerationConfig = doc(factory=GenerationConfig)
    score: ScoreConfig = doc(factory=ScoreConfig)
    eval: EvalConfig = doc(factory=EvalConfig)
    executor: ExecutorConfig = doc(factory=ExecutorConfig)
    paper_reference: list[PaperValue] = doc(factory=list)
    work_dir: str | None = doc(None, "cache of stage outputs (default: $POBENCH_WORK_DIR or ./runs)")
    results_dir: str | None = doc(None, "where leaderboards go (default: results/<name>)")

    # filled by load_suite
    source: str = field(default="<dict>", metadata={"internal": True})
    method_specs: list[MethodSpec] = field(default_factory=list, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """The validated configuration as plain data (what is hashed and stored in manifests)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                continue
            out[f.name] = _plain(getattr(self, f.name))
        return out

    def hash(self) -> str:
        return stable_hash(self.to_dict())

    def resolved_work_dir(self) -> Path:
        return Path(self.work_dir or os.environ.get("POBENCH_WORK_DIR") or "runs").expanduser()

    def resolved_results_dir(self) -> Path:
        return Path(self.results_dir or Path("results") / self.name)


# ----------------------------------------------------------------------------------------------
# hashing

def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.metadata.get("internal")}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def stable_hash(value: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys), truncated to ``length`` hex digits."""
    blob = json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# ----------------------------------------------------------------------------------------------
# overrides

def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> (``a.b``, YAML-parsed value). ``methods=dpo,ipo`` keeps only those methods."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted KEY, e.g. train.steps=5")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty field name in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in the raw mapping. ``methods=a,b`` (or a list) selects methods."""
    if key == "methods" and isinstance(value, (str, list)):
        names = [n.strip() for n in value.split(",")] if isinstance(value, str) else [str(n) for n in value]
        current = data.get("methods") or {}
        data["methods"] = {n: copy.deepcopy(current.get(n, {})) or {} for n in names}
        return
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if part.isdigit() and isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise ConfigError(f"override {key}: index {idx} out of range (list has {len(node)} items)")
            node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[:i]) or '<root>'} is not a mapping")
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list) and last.isdigit():
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {key}: {'.'.join(parts[:-1])} is not a mapping")


# ----------------------------------------------------------------------------------------------
# validation

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build dataclasses; raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping with fields {_field_names(tp)}, got {value!r}")
        return _build(tp, value, path)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            if dataclasses.is_dataclass(item_tp) and isinstance(value, dict):
                value = [value]  # `models: {id: ...}` is a list of one
            elif not isinstance(value, (dict, list)) and value is not None:
                value = [value]  # `seeds: 0` is a list of one
            else:
                raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads `5e-4` (no dot) as a string: accept numeric strings
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    allowed = _field_names(cls)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown field; allowed fields{' of ' + path if path else ''}: "
                          f"{allowed}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal") or f.name not in data:
            if (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                    and not f.metadata.get("internal")):
                raise ConfigError(f"{path + '.' if path else ''}{f.name}: required field is missing")
            continue
        fpath = f"{path}.{f.name}" if path else f.name
        value = _coerce(data[f.name], hints[f.name], fpath)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{fpath}: {value!r} is not one of {list(choices)}")
        minimum = f.metadata.get("minimum")
        if minimum is not None and value is not None and value < minimum:
            raise ConfigError(f"{fpath}: {value!r} is below the minimum {minimum}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _deep_update(base: dict[str, Any], update: dict[str, Any], path: str) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v, f"{path}.{k}")
        else:
            base[k] = v


def _method_specs(methods: dict[str, Any], check_registry: bool) -> list[MethodSpec]:
    specs = []
    available: list[str] | None = None
    if check_registry:
        try:
            import methods as methods_registry

            available = methods_registry.available()
        except ImportError:  # pragma: no cover - methods is part of this distribution
            available = None
    for name, entry in methods.items():
        path = f"methods.{name}"
        if available is not None and name not in available:
            raise ConfigError(f"{path}: unknown method {name!r}; available: {available}")
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: expected a mapping of hyperparameters (or {{}}), got {entry!r}")
        grid: dict[str, list[Any]] = {}
        for key, value in entry.items():
            if key in RESERVED_METHOD_KEYS:
                continue
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ConfigError(f"{path}.{key}: an empty list sweeps nothing; give at least one value")
            grid[str(key)] = values
        train = entry.get("train") or {}
        generation = entry.get("generation") or {}
        if not isinstance(train, dict):
            raise ConfigError(f"{path}.train: expected a mapping of train fields, got {train!r}")
        if not isinstance(generation, dict):
            raise ConfigError(f"{path}.generation: expected a mapping of generation fields, got {generation!r}")
        merged = _plain(TrainConfig())
        _deep_update(merged, train, f"{path}.train")
        _build(TrainConfig, merged, f"{path}.train")
        merged = _plain(GenerationConfig())
        _deep_update(merged, generation, f"{path}.generation")
        _build(GenerationConfig, merged, f"{path}.generation")
        spec = MethodSpec(name=name, grid=grid, train=train, generation=generation, label=entry.get("label"))
        if check_registry and available is not None:
            _check_hyperparameters(spec, path)
        specs.append(spec)
    return specs


def _check_hyperparameters(spec: MethodSpec, path: str) -> None:
    """Build the method at every grid point so a bad name or value fails now, naming the field."""
    import methods as methods_registry

    try:
        cls = methods_registry.method_class(spec.name)
    except methods_registry.MethodError as exc:
        # a built-in whose module has not been written yet: validated when it loads
        if "could not be loaded" in str(exc):
            return
        raise ConfigError(f"{path}: {exc}") from exc
    allowed = sorted(cls.hyperparameters)
    for key in spec.grid:
        if key not in cls.hyperparameters:
            raise ConfigError(f"{path}.{key}: unknown hyperparameter of {spec.name!r}; allowed: {allowed}")
    for point in spec.hyperparameter_points():
        try:
            cls(**point)
        except (methods_registry.MethodError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def validate(data: dict[str, Any], source: str = "<dict>", check_registries: bool = True) -> SuiteConfig:
    """Validate a raw suite mapping; returns a :class:`SuiteConfig` or raises :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a suite file must be a YAML mapping, got {type(data).__name__}")
    try:
        suite = _build(SuiteConfig, data, "")
        if not suite.methods and not suite.reference_row:
            raise ConfigError("methods: no method selected and reference_row is false: nothing to run")
        if not suite.seeds:
            raise ConfigError("seeds: give at least one seed")
        if len(set(suite.seeds)) != len(suite.seeds):
            raise ConfigError(f"seeds: duplicate seeds in {suite.seeds}")
        if not suite.tasks:
            raise ConfigError("tasks: give at least one task")
        if check_registries:
            _check_tasks(suite.tasks)
            _check_eval_tasks(suite)
        elif len(set(suite.eval_tasks)) != len(suite.eval_tasks):
            raise ConfigError(f"eval_tasks: duplicate tasks in {suite.eval_tasks}")
        for name, options in suite.task_options.items():
            if name not in suite.tasks and name not in suite.eval_tasks:
                raise ConfigError(f"task_options.{name}: not one of this suite's tasks {suite.tasks}"
                                  + (f" or eval_tasks {suite.eval_tasks}" if suite.eval_tasks else ""))
            if not isinstance(options, dict):
                raise ConfigError(f"task_options.{name}: expected a mapping of tasks.get keyword arguments")
        if check_registries:
            _check_eval_task_options(suite)
        suite.method_specs = _method_specs(suite.methods, check_registries)
        if suite.generation.backend == "openai" and not (suite.generation.base_url or suite.generation.serve_python):
            raise ConfigError("generation.base_url: the openai backend needs base_url (an existing server) "
                              "or serve_python (pobench starts `vllm serve` with that Python)")
        if (suite.tis.positive == "suite_dpo" and "tis_dpo" in suite.methods
                and "dpo" not in suite.methods):
            raise ConfigError("tis.positive: 'suite_dpo' reuses this suite's DPO policy, but methods has no "
                              "'dpo'; add dpo or set tis.positive: train")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    suite.source = source
    return suite


def _check_tasks(names: list[str]) -> None:
    try:
        import tasks as tasks_registry
    except ImportError:
        return
    available_fn = getattr(tasks_registry, "available", None)
    if available_fn is None:
        return
    available = list(available_fn())
    for i, name in enumerate(names):
        if name not in available:
            raise ConfigError(f"tasks[{i}]: unknown task {name!r}; available: {available}")
        try:
            cls = tasks_registry.task_class(name)
        except Exception:  # an unloadable task names itself when a stage uses it
            continue
        if getattr(cls, "evaluation", "samples") != "samples" or getattr(cls, "preference_mode", "") == "none":
            hint = (f"list it under `eval_tasks: [{name}]` to evaluate every trained policy and the reference, "
                    f"or run `pobench tasks {name} --evaluate CHECKPOINT`"
                    if getattr(cls, "evaluation", "samples") == "model" else
                    f"evaluate a trained policy with `pobench tasks {name} --evaluate CHECKPOINT`")
            raise ConfigError(f"tasks[{i}]: task {name!r} evaluates checkpoints (evaluation="
                              f"{getattr(cls, 'evaluation', '?')!r}, preference_mode="
                              f"{getattr(cls, 'preference_mode', '?')!r}) and cannot be a suite's training task; "
                              f"{hint}")


#: keyword arguments every task accepts besides its own ``options`` (tasks.base.Task.__init__)
COMMON_TASK_ARGUMENTS = ("data_dir", "source", "judge")


def model_evaluation_tasks() -> list[str]:
    """Registered tasks that evaluate a checkpoint (``evaluation == "model"``): what ``eval_tasks`` accepts."""
    import tasks as tasks_registry

    names = []
    for name in tasks_registry.available():
        try:
            if getattr(tasks_registry.task_class(name), "evaluation", "samples") == "model":
                names.append(name)
        except Exception:  # an unloadable task names itself when a stage uses it
            continue
    return names


def _check_eval_tasks(suite: SuiteConfig) -> None:
    """``eval_tasks``: registered model-evaluation tasks, each once, whose metric names are not
    already columns of the training tasks' rows (they become extra columns of the same rows)."""
    if not suite.eval_tasks:
        return
    try:
        import tasks as tasks_registry
    except ImportError:
        return
    available = list(tasks_registry.available())
    allowed = model_evaluation_tasks()
    seen: dict[str, str] = {}  # metric -> task that reports it
    for name in suite.tasks:
        try:
            seen.update({m.name: name for m in tasks_registry.task_class(name).metrics})
        except Exception:
            continue
    seen.setdefault("kl", "the score stage")
    for i, name in enumerate(suite.eval_tasks):
        if name not in available:
            raise ConfigError(f"eval_tasks[{i}]: unknown task {name!r}; model-evaluation tasks: {allowed}")
        if name in suite.eval_tasks[:i]:
            raise ConfigError(f"eval_tasks[{i}]: {name!r} is listed twice")
        cls = tasks_registry.task_class(name)
        evaluation = getattr(cls, "evaluation", "samples")
        if evaluation != "model":
            raise ConfigError(f"eval_tasks[{i}]: task {name!r} scores generated samples (evaluation={evaluation!r}); "
                              f"eval_tasks takes model-evaluation tasks: {allowed} (list {name!r} under tasks:)")
        for metric in cls.metrics:
            if metric.name in seen:
                raise ConfigError(f"eval_tasks[{i}]: task {name!r} reports metric {metric.name!r}, which "
                                  f"{seen[metric.name]!r} already reports; both would fill one leaderboard column")
            seen[metric.name] = name


def _check_eval_task_options(suite: SuiteConfig) -> None:
    """An eval task's options are checked now: it first runs after training, too late to learn of a typo."""
    try:
        import tasks as tasks_registry
    except ImportError:
        return
    for name in suite.eval_tasks:
        allowed = sorted({*COMMON_TASK_ARGUMENTS, *tasks_registry.task_class(name).options})
        for key in suite.task_options.get(name, {}):
            if key not in allowed:
                raise ConfigError(f"task_options.{name}.{key}: unknown option of task {name!r}; allowed: {allowed}")


def resolve_suite_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A path, or a bare suite name looked up as configs/<name>.yaml (cwd first, then the repo)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for base in (Path.cwd(), REPO_ROOT):
        for candidate in (base / "configs" / f"{name_or_path}.yaml", base / "configs" / f"{name_or_path}"):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"suite {str(name_or_path)!r} not found: give a YAML path or a name under configs/ "
                      f"(e.g. smoke, default, paper/dpo_imdb)")


def load_raw(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = resolve_suite_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite file must be a YAML mapping, got {type(data).__name__}")
    return data


def load_suite(path: str | os.PathLike[str], overrides: list[str] | None = None,
               check_registries: bool = True) -> SuiteConfig:
    """Read, override and validate a suite file (``path`` may be a bare name under configs/)."""
    resolved = resolve_suite_path(path)
    data = load_raw(resolved)
    for text in overrides or []:
        key, value = parse_override(text)
        try:
            apply_override(data, key, value)
        except ConfigError as exc:
            raise ConfigError(f"{resolved}: {exc}") from None
    return validate(data, source=str(resolved), check_registries=check_registries)


def effective_section(base: Any, overrides: dict[str, Any]) -> Any:
    """A copy of a dataclass section with a method's partial overrides applied."""
    if not overrides:
        return copy.deepcopy(base)
    merged = _plain(base)
    _deep_update(merged, overrides, "")
    return _build(type(base), merged, "")


def field_help(cls: type = SuiteConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted field, default, help) for every field: the reference table in docs/harness.md."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        name = f"{prefix}{f.name}"
        hints = typing.get_type_hints(cls)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(field_help(tp, name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        extra = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            extra = (extra + "; " if extra else "") + "one of " + ", ".join(map(str, f.metadata["choices"]))
        rows.append((name, repr(_plain(default)), extra))
    return rows
