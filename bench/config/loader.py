"""Reading suites: YAML -> dotted command-line overrides -> pydantic validation -> :class:`SuiteConfig`.

Everything is validated before any work starts; an error names the file (or the override), the
dotted field and the allowed values::

    configs/default.yaml: train.optimiser: unknown field; allowed fields of train: [...]
    override train.lr_schedule=cosin: train.lr_schedule: 'cosin' is not one of ['constant', 'linear', 'cosine', ...

A method entry maps hyperparameter names to a value or a list of values (a sweep); the reserved
keys ``train``, ``generation`` and ``label`` hold per-method overrides of the suite's sections,
validated here as full sections (the planner hands the merged section to the stages that use it)::

    methods:
      dpo: {beta: [0.05, 0.1, 0.5]}
      sparsepo: {beta: 0.8, train: {lr: 1.0e-6}, generation: {backend_options: {batch_size: 16}}}
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bench.config.schema import (RESERVED_METHOD_KEYS, GenerationConfig, MethodSpec, SuiteConfig,
                                 SuiteTrainConfig)
from bench.validation import format_error

REPO_ROOT = Path(__file__).resolve().parents[2]
#: keyword arguments every task accepts besides its own ``options`` (tasks.base.Task.__init__)
COMMON_TASK_ARGUMENTS = ("data_dir", "source", "judge")


class ConfigError(ValueError):
    """A suite file or override is invalid; the message names the file, field and allowed values."""


def _validated(model: type[BaseModel], data: Any, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_error(exc.errors()[0], root=model, prefix=prefix)) from None


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, recursively for nested mappings (``base`` is not modified)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def effective_section(base: BaseModel, overrides: dict[str, Any], path: str = "") -> Any:
    """A copy of a suite section with a method's partial overrides applied and validated."""
    if not overrides:
        return base.model_copy(deep=True)
    return _validated(type(base), deep_update(base.model_dump(exclude_unset=False), overrides), path)


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

def _method_specs(suite: SuiteConfig, check_registry: bool) -> list[MethodSpec]:
    import methods as methods_registry

    available = methods_registry.available() if check_registry else None
    specs = []
    for name, entry in suite.methods.items():
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
        for section in ("train", "generation"):
            if not isinstance(entry.get(section) or {}, dict):
                raise ConfigError(f"{path}.{section}: expected a mapping of {section} fields, "
                                  f"got {entry[section]!r}")
        train = _validated(SuiteTrainConfig, deep_update(suite.train.all_fields(exclude=set(SuiteTrainConfig.filled_by_suite)),
                                                         entry.get("train") or {}),
                           f"{path}.train")
        generation = _validated(GenerationConfig, deep_update(suite.generation.all_fields(),
                                                              entry.get("generation") or {}), f"{path}.generation")
        seeds = entry.get("seeds")
        if seeds is not None:
            seeds = seeds if isinstance(seeds, list) else [seeds]
            if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
                raise ConfigError(f"{path}.seeds: give a list of integer seeds, got {entry['seeds']!r}")
            if len(set(seeds)) != len(seeds):
                raise ConfigError(f"{path}.seeds: duplicate seeds in {seeds}")
            outside = [s for s in seeds if s not in suite.seeds]
            if outside:
                raise ConfigError(f"{path}.seeds: {outside} not among the suite's seeds {suite.seeds} (the reference "
                                  "row is evaluated on those, and each method pairs with it seed by seed)")
        spec = MethodSpec(name=name, grid=grid, train=train, generation=generation, label=entry.get("label"),
                          seeds=seeds)
        if check_registry:
            _check_hyperparameters(spec, path)
        specs.append(spec)
    return specs


def _check_hyperparameters(spec: MethodSpec, path: str) -> None:
    """Build the method at every grid point so a bad name or value fails now, naming the field."""
    import methods as methods_registry

    try:
        cls = methods_registry.method_class(spec.name)
    except methods_registry.MethodError as exc:
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


def _check_preparation(suite: SuiteConfig) -> None:
    """``preparation.<step>``: a step some method of the suite declares, its options valid."""
    from bench.stages.prep import preparation_steps

    steps = preparation_steps()
    for name, options in suite.preparation.items():
        if name not in steps:
            raise ConfigError(f"preparation.{name}: unknown preparation step; available: {sorted(steps)}")
        try:
            steps[name].options_model.model_validate(options)
        except ValidationError as exc:
            raise ConfigError(format_error(exc.errors()[0], root=steps[name].options_model,
                                           prefix=f"preparation.{name}")) from None


def validate(data: dict[str, Any], source: str = "<dict>", check_registries: bool = True,
             check_recipe: bool = True) -> SuiteConfig:
    """Validate a raw suite mapping; returns a :class:`SuiteConfig` or raises :class:`ConfigError`.

    ``check_recipe``: check a ``recipe:`` section against the suite's values (off for a suite changed by
    overrides: the recipe describes the file, which :func:`load_suite` checks on its own)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a suite file must be a YAML mapping, got {type(data).__name__}")
    try:
        suite = _validated(SuiteConfig, data)
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
        _check_transfer_tasks(suite, check_registries)
        for name in suite.task_options:
            if name not in suite.scored_tasks and name not in suite.eval_tasks:
                raise ConfigError(f"task_options.{name}: not one of this suite's tasks {suite.tasks}"
                                  + (f" or transfer_tasks {suite.transfer_tasks}" if suite.transfer_tasks else "")
                                  + (f" or eval_tasks {suite.eval_tasks}" if suite.eval_tasks else ""))
        if check_registries:
            _check_eval_task_options(suite)
            _check_preparation(suite)
        suite._method_specs = _method_specs(suite, check_registries)
        if check_registries and check_recipe and suite.recipe is not None:
            from bench.recipes import recipe_problems

            problems = recipe_problems(suite)
            if problems:
                raise ConfigError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    suite._source = source
    return suite


def _registered_task_class(name: str, where: str, available: list[str]):
    """The class of task ``name`` (None when it cannot be loaded now: an unloadable task names itself
    when a stage uses it); a ConfigError at ``where`` when no such task is registered."""
    import tasks as tasks_registry

    if name not in available:
        raise ConfigError(f"{where}: unknown task {name!r}; available: {available}")
    try:
        return tasks_registry.task_class(name)
    except Exception:
        return None


def _check_tasks(names: list[str]) -> None:
    import tasks as tasks_registry

    available = list(tasks_registry.available())
    for i, name in enumerate(names):
        cls = _registered_task_class(name, f"tasks[{i}]", available)
        if cls is None:
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
    import tasks as tasks_registry

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


def _check_transfer_tasks(suite: SuiteConfig, check_registry: bool) -> None:
    """``transfer_tasks``: sample-scored tasks, each once, none a training task, with exactly one training
    task (a transfer task's rows are the policies of that task; two would give two rows one label)."""
    if not suite.transfer_tasks:
        return
    if len(suite.tasks) != 1:
        raise ConfigError(f"transfer_tasks: the policies of one training task are scored on them; tasks has "
                          f"{len(suite.tasks)} ({suite.tasks}): keep one, or run a suite per training task")
    import tasks as tasks_registry

    available = list(tasks_registry.available()) if check_registry else None
    for i, name in enumerate(suite.transfer_tasks):
        where = f"transfer_tasks[{i}]"
        if name in suite.transfer_tasks[:i]:
            raise ConfigError(f"{where}: {name!r} is listed twice")
        if name in suite.tasks:
            raise ConfigError(f"{where}: {name!r} is the training task; its rows are there already")
        if available is None:
            continue
        cls = _registered_task_class(name, where, available)
        if cls is None:
            continue
        if getattr(cls, "evaluation", "samples") != "samples":
            raise ConfigError(f"{where}: task {name!r} evaluates checkpoints (evaluation="
                              f"{getattr(cls, 'evaluation', '?')!r}); list it under eval_tasks instead")


def _check_eval_task_options(suite: SuiteConfig) -> None:
    """Every task's options are checked now, before any work: an eval task first runs after training,
    and even a training task's first stage may follow minutes of sampling (a judge spec is used once
    the samples exist). Unknown options, a ``source`` the task does not have, a judge spec whose kind
    no judge registers."""
    import tasks as tasks_registry

    for name in [*suite.scored_tasks, *suite.eval_tasks]:
        try:
            cls = tasks_registry.task_class(name)
        except Exception:  # an unloadable task names itself when a stage uses it
            continue
        allowed = sorted({*COMMON_TASK_ARGUMENTS, *cls.options})
        options = suite.task_options.get(name, {})
        for key in options:
            if key not in allowed:
                raise ConfigError(f"task_options.{name}.{key}: unknown option of task {name!r}; allowed: {allowed}")
        if "source" in options:
            kinds = ["auto", *(s.kind for s in cls.sources)]
            if options["source"] not in kinds:
                raise ConfigError(f"task_options.{name}.source: {options['source']!r} is not one of {kinds} "
                                  f"(the sources of task {name!r})")
        if options.get("judge") is not None:
            _check_judge_spec(f"task_options.{name}.judge", options["judge"])


def _check_judge_spec(path: str, spec: Any) -> None:
    """The kind of a judge spec (``sentiment:vader``, ``{spec: llm:..., ...}``) is a registered judge."""
    from tasks import judges

    text = spec.get("spec") if isinstance(spec, dict) else spec
    if not isinstance(text, str):
        raise ConfigError(f"{path}: expected a judge spec string or a mapping with a 'spec' key, got {spec!r}")
    kind = text.partition(":")[0]
    kind = judges.ALIASES.get(kind, kind)
    if kind not in judges.REGISTRY:
        raise ConfigError(f"{path}: unknown judge {text.partition(':')[0]!r} in {text!r}; judges: "
                          f"{judges._spec_forms()}")


# ----------------------------------------------------------------------------------------------
# files

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
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite file must be a YAML mapping, got {type(data).__name__}")
    return data


def load_suite(path: str | os.PathLike[str], overrides: list[str] | None = None,
               check_registries: bool = True) -> SuiteConfig:
    """Read, override and validate a suite file (``path`` may be a bare name under configs/).

    An invalid override is reported as the override (``override train.steps=x: ...``), not as
    the file, when the file alone is valid."""
    resolved = resolve_suite_path(path)
    data = load_raw(resolved)
    pristine = copy.deepcopy(data)
    for text in overrides or []:
        key, value = parse_override(text)
        try:
            apply_override(data, key, value)
        except ConfigError as exc:
            raise ConfigError(f"{resolved}: {exc}") from None
    try:
        suite = validate(data, source=str(resolved), check_registries=check_registries, check_recipe=not overrides)
        if overrides and suite.recipe is not None:  # the recipe describes the file, not the overridden run
            validate(pristine, source=str(resolved), check_registries=check_registries)
        return suite
    except ConfigError as exc:
        if not overrides:
            raise
        validate(pristine, source=str(resolved), check_registries=check_registries)  # the file's own error first
        # the file is valid: find the override that breaks it
        applied = copy.deepcopy(pristine)
        for text in overrides:
            apply_override(applied, *parse_override(text))
            try:
                validate(applied, source=str(resolved), check_registries=check_registries, check_recipe=False)
            except ConfigError as inner:
                detail = str(inner).removeprefix(f"{resolved}: ")
                raise ConfigError(f"override {text}: {detail}") from None
        raise exc


def field_help(model: type[BaseModel] = SuiteConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted field, default, help) for every field: the reference table in docs/harness.md."""
    import typing

    from bench.validation import _unwrap

    rows = []
    for name, info in model.model_fields.items():
        if name in getattr(model, "filled_by_suite", ()):
            continue  # the suite fills them in
        dotted = f"{prefix}{name}"
        inner = _unwrap(info.annotation)
        if (isinstance(inner, type) and issubclass(inner, BaseModel) and typing.get_origin(info.annotation)
                not in (list, dict)):
            rows.extend(field_help(inner, dotted + "."))
            continue
        default = info.get_default(call_default_factory=True) if not info.is_required() else "(required)"
        extra = info.description or ""
        if typing.get_origin(info.annotation) is typing.Literal:
            extra = (extra + "; " if extra else "") + "one of " + ", ".join(map(str, typing.get_args(info.annotation)))
        from bench.hashing import plain

        rows.append((dotted, repr(plain(default)), extra))
    return rows


def field_table() -> str:
    """The markdown table of every suite field (docs/harness.md "Every field"; a test keeps them equal)."""
    lines = ["| field | default | meaning |", "|---|---|---|"]
    for name, default, meaning in field_help():
        meaning = meaning.replace("|", "\\|")
        lines.append(f"| `{name}` | `{default}` | {meaning} |")
    return "\n".join(lines) + "\n"
