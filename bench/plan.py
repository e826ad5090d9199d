"""The planner: a suite -> a DAG of content-addressed, typed stage nodes, and the grid of leaderboard rows.

Stages (:mod:`bench.stages`): ``sft`` (optional) -> ``prefdata`` -> ``prep`` (a method's own
preparation step, when its method declares one) -> ``train`` -> ``generate`` -> ``score``, and per
model-evaluation task of the suite (``eval_tasks``) an ``evaluate`` node on the trained policy (or
the reference); the report reads the scores and evaluations. A node's key hashes its stage version,
its typed params and the keys of its inputs (:func:`bench.stages.node_key`), so two suites (or two
cells of one suite) that share an input compute it once, and a change upstream re-keys everything
downstream. The planner names no method: preparation steps say what they need.

A *cell* is one leaderboard entry for one seed: (task, model, method, hyperparameter point, seed),
or the reference policy (method ``reference``) for that seed. A suite's ``transfer_tasks`` add cells of
their own task on the policies trained on the training task (their own ``generate`` and ``score``
nodes on the same ``train`` nodes, and the reference's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.config.schema import GenerationConfig, MethodSpec, ModelConfig, SuiteConfig, SuiteTrainConfig
from bench.prompts import PromptFormat
from bench.stages import ModelRef, TaskRef, node_key, stage
from bench.stages.data import PrefDataParams
from bench.stages.evaluate import EvaluateParams, GenerateParams, PairsParams, ScoreParams
from bench.stages.prep import PrepParams, PrepRequest, preparation_step
from bench.stages.train import SFTParams, TrainParams

REFERENCE = "reference"


@dataclass
class Node:
    """One unit of cached work: its stage, key, typed params and input nodes."""

    stage: str
    key: str
    params: Any
    deps: dict[str, "Node"] = field(default_factory=dict)
    label: str = ""
    #: ray resource request for this node (cells' heavy stages ask for the executor's per-cell share)
    heavy: bool = False
    #: what the plan's other nodes will read from intermediate results this node computes along its own
    #: (``Stage.companions``: a training run's fellow runs on the same pairs); set by :func:`build_plan`,
    #: never keyed, never needed for correctness
    companions: tuple = field(default=(), compare=False)

    def __hash__(self) -> int:
        return hash((self.stage, self.key))


@dataclass
class Cell:
    task: str
    model: str
    method: str
    hparams: dict[str, Any]
    seed: int
    label: str
    score: Node
    train: Node | None
    #: eval task name -> its ``evaluate`` node on this cell's policy (``eval_tasks``)
    evals: dict[str, Node] = field(default_factory=dict)
    #: the optimizer step of the evaluated policy (a frontier point; ``train.eval_at_steps``);
    #: the final step for the last point, None for the reference and for epoch-based runs' final point
    step: int | None = None

    @property
    def row_id(self) -> str:
        """Identifies the leaderboard row (all seeds of one configuration share it)."""
        return f"{self.task}/{self.model}/{self.label}"


@dataclass
class Plan:
    suite: SuiteConfig
    cells: list[Cell]
    nodes: list[Node]  # topologically sorted, deduplicated

    def by_stage(self, stage_name: str) -> list[Node]:
        return [n for n in self.nodes if n.stage == stage_name]


def method_label(spec: MethodSpec, point: dict[str, Any]) -> str:
    """Row label: the method name plus the swept hyperparameters (fixed ones are in the record)."""
    base = spec.label or spec.name
    swept = {k: v for k, v in point.items() if len(spec.grid.get(k, [])) > 1}
    if not swept:
        return base
    return base + "(" + ",".join(f"{k}={v}" for k, v in swept.items()) + ")"


def full_hparams(method: str, point: dict[str, Any]) -> dict[str, Any]:
    """The method's hyperparameters at ``point`` with its defaults filled in (what keys a train node)."""
    import methods

    return methods.get(method, **point).hparams()


def task_ref(suite: SuiteConfig, task: str) -> TaskRef:
    """The task identity that keys every node using it: name, version, options and the data source
    it resolves to now (``Task.planned_source()``), plus its prompt counts when cheaply known."""
    import tasks

    options = dict(suite.task_options.get(task, {}))
    try:
        version = tasks.task_class(task).version
        instance = tasks.get(task, **options)
    except Exception:  # an unloadable task fails with its own message when the stage runs
        return TaskRef(task, "?", options)
    try:
        data = instance.planned_source()
    except tasks.TaskError:  # no source available: the stage that reads it fails with the task's message
        return TaskRef(task, version, options, {"kind": "unavailable"})
    counts = {split: n for split in ("train", "eval") if (n := instance.prompt_count(split)) is not None}
    return TaskRef(task, version, options, data, counts, held_out_pair_count(instance))


def held_out_pair_count(instance: Any) -> int | None:
    """How many held-out pairs the task scores (0: its class does not define ``eval_pairs``; None: it
    does, but they cannot be loaded now, and the pairs stage will say why when it runs)."""
    from tasks.base import Task

    if type(instance).eval_pairs is Task.eval_pairs:
        return 0
    try:
        return len(instance.eval_pairs())
    except Exception:
        return None


def model_ref(model: ModelConfig) -> ModelRef:
    return ModelRef(model.id, model.revision, model.dtype)


class _Builder:
    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], Node] = {}
        self.order: list[Node] = []

    def add(self, stage_name: str, params: Any, deps: dict[str, Node], label: str = "") -> Node:
        key = node_key(stage_name, params, deps)
        existing = self.nodes.get((stage_name, key))
        if existing is not None:
            return existing
        node = Node(stage=stage_name, key=key, params=params, deps=deps, label=label, heavy=stage(stage_name).heavy)
        self.nodes[(stage_name, key)] = node
        self.order.append(node)  # deps were added before: insertion order is topological
        return node


def build_plan(suite: SuiteConfig) -> Plan:
    b = _Builder()
    cells: list[Cell] = []
    suite_format = suite.train.prompt_format()
    refs: dict[str, TaskRef] = {}

    def task_ref_of(name: str) -> TaskRef:  # each task's data is resolved (and fingerprinted) once per plan
        if name not in refs:
            refs[name] = task_ref(suite, name)
        return refs[name]

    for model_cfg in suite.models:
        model = model_ref(model_cfg)
        for task in suite.tasks:
            tref = task_ref_of(task)
            reference_deps: dict[str, Node] = {}
            if suite.sft.enabled:
                prompt_fields = {"chat_template": suite.train.chat_template,
                                 "max_prompt_length": suite.train.max_prompt_length}
                reference_deps["reference"] = b.add(
                    "sft", SFTParams(model, tref, suite.sft, prompt_fields, seed=suite.prefdata.data_seed), {},
                    label=f"sft {task}")
            prefdata = b.add("prefdata", PrefDataParams(model, tref, suite.prefdata, suite_format,
                                                        suite.generation.backend, suite.generation.dtype,
                                                        suite.generation.backend_options),
                             dict(reference_deps), label=f"prefdata {task}")

            transfer = [task_ref_of(name) for name in suite.transfer_tasks]

            def generate_and_score(policy_deps: dict[str, Node], seed: int, gen: GenerationConfig,
                                   prompt_format: PromptFormat, label: str, step: int | None = None,
                                   on: TaskRef | None = None) -> Node:
                """Sample and score one policy; ``step``: a saved intermediate policy (None = final); ``on``:
                a transfer task to sample and score it on (None = the training task)."""
                on = on or tref
                at = (f"@{step}" if step is not None else "") + (f" on {on.name}" if on is not tref else "")
                generate = b.add("generate", GenerateParams(model, on, gen, prompt_format, seed, step),
                                 policy_deps, label=f"generate {label}{at} s{seed}")
                prompts = gen.prompts if gen.prompts is not None else on.prompt_counts.get("eval")
                sequences = None if prompts is None else prompts * gen.samples_per_prompt
                score_deps = {"samples": generate, **policy_deps}
                if on.held_out_pairs != 0:
                    score_deps["pairs"] = held_out_pairs(policy_deps, prompt_format, label, at, step, on)
                return b.add("score", ScoreParams(model, on, suite.score, prompt_format, seed, step, sequences),
                             score_deps, label=f"score {label}{at} s{seed}")

            def held_out_pairs(policy_deps: dict[str, Node], prompt_format: PromptFormat, label: str, at: str,
                               step: int | None, on: TaskRef) -> Node:
                """The pairs node of a policy (no sampling seed in its key: one per policy and step); a
                policy's reads the reference's, which is computed once."""
                reference = b.add("pairs", PairsParams(model, on, prompt_format, suite.score.kl_dtype, None,
                                                       suite.score.kl_batch_size),
                                  dict(reference_deps),
                                  label=f"pairs {REFERENCE}" + (f" on {on.name}" if on is not tref else ""))
                if "policy" not in policy_deps:
                    return reference
                seed = policy_deps["policy"].params.seed
                return b.add("pairs", PairsParams(model, on, prompt_format, suite.score.kl_dtype, step,
                                                  suite.score.kl_batch_size),
                             {**policy_deps, "reference_pairs": reference}, label=f"pairs {label}{at} s{seed}")

            def evaluate(policy_deps: dict[str, Node], label: str) -> dict[str, Node]:
                """One node per eval task on this policy. No seed in the key: the evaluation of one
                checkpoint is deterministic, so the reference's seeds share its evaluation."""
                return {name: b.add("evaluate", EvaluateParams(model, task_ref_of(name), suite.eval.limit,
                                                               dict(suite.eval.gen_kwargs), suite.eval.device),
                                    policy_deps, label=f"evaluate {name} {label}")
                        for name in suite.eval_tasks}

            def train_node(method: str, point: dict[str, Any], train: SuiteTrainConfig, seed: int,
                           swap_pairs: bool = False, deps: dict[str, Node] | None = None) -> Node:
                hparams = full_hparams(method, point)
                label = f"train {method}" + ("(" + ",".join(f"{k}={v}" for k, v in point.items()) + ")"
                                             if point else "") + (" swapped" if swap_pairs else "")
                return b.add("train", TrainParams(model, method, hparams, train, seed, swap_pairs),
                             deps or {"prefdata": prefdata, **reference_deps}, label=f"{label} s{seed}")

            if suite.reference_row:
                for seed in suite.seeds:
                    score = generate_and_score(dict(reference_deps), seed, suite.generation, suite_format, REFERENCE)
                    cells.append(Cell(task, model.id, REFERENCE, {}, seed, REFERENCE, score, None,
                                      evaluate(dict(reference_deps), REFERENCE)))
                    for on in transfer:
                        score = generate_and_score(dict(reference_deps), seed, suite.generation, suite_format,
                                                   REFERENCE, on=on)
                        cells.append(Cell(on.name, model.id, REFERENCE, {}, seed, REFERENCE, score, None))

            # methods without a preparation step first, so a step that asks for a training run
            # the suite also has (e.g. TIS-DPO's pi_plus = the suite's DPO) finds it already planned
            specs = sorted(suite.method_specs, key=lambda s: _preparation(s) is not None)
            for spec in specs:
                for point in spec.hyperparameter_points():
                    label = method_label(spec, point)
                    for seed in spec.seeds or suite.seeds:
                        deps = {"prefdata": prefdata, **reference_deps}
                        step = _preparation(spec, point)
                        if step is not None:
                            deps["prep"] = _prep_node(b, suite, spec, point, seed, step, model, deps,
                                                      lambda m, p, swap_pairs=False, s=seed, t=spec.train:
                                                      train_node(m, p, t, s, swap_pairs))
                        train = b.add("train", TrainParams(model, spec.name, full_hparams(spec.name, point),
                                                           spec.train, seed),
                                      deps, label=f"train {label} s{seed}")
                        policy = {"policy": train, **reference_deps}
                        final = spec.train.steps or None
                        for step in [s for s in spec.train.eval_at_steps if s != final]:  # frontier points
                            for on in [tref, *transfer]:
                                score = generate_and_score(policy, seed, spec.generation, spec.train.prompt_format(),
                                                           label, step, on=on)
                                cells.append(Cell(on.name, model.id, spec.name, point, seed, label, score, train, {},
                                                  step))
                        score = generate_and_score(policy, seed, spec.generation, spec.train.prompt_format(), label)
                        cells.append(Cell(task, model.id, spec.name, point, seed, label, score, train,
                                          evaluate(policy, f"{label} s{seed}"), final))
                        for on in transfer:
                            score = generate_and_score(policy, seed, spec.generation, spec.train.prompt_format(),
                                                       label, on=on)
                            cells.append(Cell(on.name, model.id, spec.name, point, seed, label, score, train, {},
                                              final))
    by_ident = {(node.stage, node.key): node for node in b.order}
    for name in {node.stage for node in b.order}:
        for ident, companions in stage(name).companions([n for n in b.order if n.stage == name]).items():
            by_ident[ident].companions = companions
    return Plan(suite=suite, cells=cells, nodes=b.order)


def _preparation(spec: MethodSpec, point: dict[str, Any] | None = None) -> str | None:
    """The preparation step the method declares (some methods decide it from their hyperparameters)."""
    import methods

    points = [point] if point is not None else spec.hyperparameter_points()
    for p in points:
        step = getattr(methods.get(spec.name, **p), "preparation", None)
        if step:
            return step
    return None


def _prep_node(b: _Builder, suite: SuiteConfig, spec: MethodSpec, point: dict[str, Any], seed: int, step_name: str,
               model: ModelRef, deps: dict[str, Node], train_node: Any) -> Node:
    step = preparation_step(step_name)
    options = step.options_model.model_validate(suite.preparation.get(step_name, {}))
    params = PrepParams(step_name, step.version, options.model_dump(mode="json"),
                        TrainParams(model, spec.name, full_hparams(spec.name, point), spec.train, seed))
    extra = step.plan(PrepRequest(options=options, params=params, train_node=train_node, deps=dict(deps)))
    return b.add("prep", params, {**deps, **extra}, label=f"prep {step_name} {spec.name} s{seed}")


def estimate_work(plan: Plan) -> dict[str, int | None]:
    """Work units of the nodes (optimizer steps, sequences sampled, sequences teacher-forced), each
    counted by its own stage (``Stage.work``). A unit is None (unknown) when a node cannot size it
    before its data is loaded (e.g. ``prompts: null`` on a task that does not know its prompt count):
    a partial sum would read as the whole."""
    units: dict[str, int | None] = {}
    for node in plan.nodes:
        for unit, amount in stage(node.stage).work(node).items():
            known = units.get(unit, 0)
            units[unit] = None if amount is None or known is None else known + int(amount)
    return units


def stage_roles(node: Node) -> dict[tuple[str, str], str]:
    """(stage, key) -> role of the inputs a preparation step added to ``node``'s upstream (TIS-DPO's
    ``pi_plus`` / ``pi_minus`` trainings) and of the reference's held-out pairs, so a listing can tell
    them from the cell's own stages."""
    roles: dict[tuple[str, str], str] = {}

    def visit(n: Node) -> None:
        for name, dep in n.deps.items():
            if n.stage == "prep" and name not in ("prefdata", "reference"):
                roles.setdefault((dep.stage, dep.key), name)
            elif name == "reference_pairs":  # the reference's held-out pairs a policy's are compared with
                roles.setdefault((dep.stage, dep.key), REFERENCE)
            visit(dep)

    visit(node)
    return roles


def model_config(plan: Plan, model_id: str) -> ModelConfig:
    return next(m for m in plan.suite.models if m.id == model_id)


def describe_plan(plan: Plan) -> dict[str, Any]:
    """What ``pobench plan`` prints: per cell the status of its stages, per stage the counts, work left."""
    from bench.store import Store

    store = Store(plan.suite.resolved_work_dir())
    status = {(n.stage, n.key): store.status(n.stage, n.key) for n in plan.nodes}
    cells = []
    for cell in plan.cells:
        chain: list[Node] = []

        def visit(n: Node) -> None:
            for d in n.deps.values():
                visit(d)
            if n not in chain:
                chain.append(n)

        visit(cell.score)
        for node in cell.evals.values():
            visit(node)
        roles = stage_roles(cell.score)
        named = [n.stage + (f"({roles[(n.stage, n.key)]})" if (n.stage, n.key) in roles else "") for n in chain]
        cells.append({"task": cell.task, "model": cell.model, "label": cell.label, "seed": cell.seed, "step": cell.step,
                      "run_key": cell.score.key,
                      "stages": " ".join(f"{name}:{status[(n.stage, n.key)]}" for name, n in zip(named, chain))})
    nodes: dict[str, dict[str, int]] = {}
    for n in plan.nodes:
        c = nodes.setdefault(n.stage, {"total": 0, "done": 0, "partial": 0})
        c["total"] += 1
        s = status[(n.stage, n.key)]
        if s in ("done", "partial"):
            c[s] += 1
    todo = Plan(suite=plan.suite, cells=[], nodes=[n for n in plan.nodes if status[(n.stage, n.key)] != "done"])
    configurations = len({(c.method, c.label) for c in plan.cells})
    return {"suite": plan.suite.name, "config_hash": plan.suite.hash(), "work_dir": str(store.root),
            "configurations": configurations, "cells": cells, "nodes": nodes, "work_left": estimate_work(todo),
            "work_total": estimate_work(plan), "data_sources": data_sources(plan)}


def data_sources(plan: Plan) -> dict[str, dict[str, str]]:
    """Task name -> the data source its stages are keyed on (``TaskRef.data``)."""
    out: dict[str, dict[str, str]] = {}
    for node in plan.nodes:
        ref = getattr(node.params, "task", None)
        if isinstance(ref, TaskRef) and ref.name not in out:
            out[ref.name] = dict(ref.data)
    return out


def describe_source(source: dict[str, str]) -> str:
    """``kind location #fingerprint`` of a planned data source, for one line of output."""
    if not source:
        return "unknown"
    if source.get("kind") == "unavailable":
        return "unavailable (the stages that read it will fail and say why)"
    text = f"{source['kind']} {source.get('location', '')}".strip()
    return text + (f" #{source['fingerprint']}" if source.get("fingerprint") else "")
