"""The planner: a suite -> a DAG of content-addressed stage nodes, and the grid of leaderboard rows.

Stages: ``sft`` (optional) -> ``prefdata`` -> ``prep`` (method-specific, e.g. TIS-DPO token
weights) -> ``train`` -> ``generate`` -> ``score``, and per model-evaluation task of the suite
(``eval_tasks``) an ``evaluate`` node on the trained policy (or the reference); ``report``
aggregates the scores and evaluations. A node's key is the hash of everything that can change its
output: its own config slice and the keys of its inputs, so two suites (or two cells of one suite)
that share an input compute it once, and a change anywhere upstream re-keys everything downstream.

A *cell* is one leaderboard entry for one seed: (task, model, method, hyperparameter point, seed),
or the reference policy (method ``reference``) for that seed. Its ``score`` node and its
``evaluate`` nodes are what the report reads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bench.config import (GenerationConfig, MethodSpec, ModelConfig, SuiteConfig, TrainConfig, effective_section,
                          stable_hash)

STAGES = ("sft", "prefdata", "prep", "train", "generate", "score", "evaluate")
#: bump when a stage's implementation changes its outputs, so old cached results are not reused
STAGE_VERSIONS = {"sft": "1", "prefdata": "1", "prep": "1", "train": "1", "generate": "1", "score": "1",
                  "evaluate": "1"}
REFERENCE = "reference"


@dataclass
class Node:
    """One unit of cached work. ``params`` is everything the stage function needs besides its deps."""

    stage: str
    key: str
    params: dict[str, Any]
    deps: dict[str, "Node"] = field(default_factory=dict)
    label: str = ""
    #: ray resource request for this node (cells' heavy stages ask for the executor's per-cell share)
    heavy: bool = False

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

    @property
    def row_id(self) -> str:
        """Identifies the leaderboard row (all seeds of one configuration share it)."""
        return f"{self.task}/{self.model}/{self.label}"


@dataclass
class Plan:
    suite: SuiteConfig
    cells: list[Cell]
    nodes: list[Node]  # topologically sorted, deduplicated

    def by_stage(self, stage: str) -> list[Node]:
        return [n for n in self.nodes if n.stage == stage]


def _key(stage: str, payload: dict[str, Any]) -> str:
    return stable_hash({"stage": stage, "version": STAGE_VERSIONS[stage], **payload})


def method_label(spec: MethodSpec, point: dict[str, Any]) -> str:
    """Row label: the method name plus the swept hyperparameters (fixed ones are in the record)."""
    base = spec.label or spec.name
    swept = {k: v for k, v in point.items() if len(spec.grid.get(k, [])) > 1}
    if not swept:
        return base
    return base + "(" + ",".join(f"{k}={v}" for k, v in swept.items()) + ")"


def train_settings(train: TrainConfig) -> dict[str, Any]:
    """The suite's train section as the trainer's config fields (what keys a train node)."""
    data = dataclasses.asdict(train)
    data["lora"] = None if train.peft == "full" else data["lora"]
    data.pop("peft")
    if data.get("attn_implementation") is None:
        data.pop("attn_implementation", None)  # the model's default: keys stay as before the option existed
    return data


class _Builder:
    def __init__(self, suite: SuiteConfig) -> None:
        self.suite = suite
        self.nodes: dict[tuple[str, str], Node] = {}
        self.order: list[Node] = []

    def add(self, stage: str, payload: dict[str, Any], deps: dict[str, Node], label: str = "",
            heavy: bool = False) -> Node:
        key = _key(stage, {**payload, "deps": {k: f"{d.stage}/{d.key}" for k, d in sorted(deps.items())}})
        existing = self.nodes.get((stage, key))
        if existing is not None:
            return existing
        node = Node(stage=stage, key=key, params=payload, deps=deps, label=label, heavy=heavy)
        self.nodes[(stage, key)] = node
        self.order.append(node)  # deps were added before: insertion order is topological
        return node


def task_payload(suite: SuiteConfig, task: str) -> dict[str, Any]:
    """The task identity that keys every node using it (name, version, options)."""
    version = "?"
    try:
        import tasks

        version = tasks.task_class(task).version
    except Exception:  # an unloadable task fails with its own message when the stage runs
        pass
    return {"name": task, "version": version, "options": suite.task_options.get(task, {})}


def build_plan(suite: SuiteConfig) -> Plan:
    b = _Builder(suite)
    cells: list[Cell] = []
    gen_default = suite.generation
    # the device is not part of the key: where a checkpoint is evaluated does not change what is measured
    eval_payload = {"limit": suite.eval.limit, "gen_kwargs": suite.eval.gen_kwargs}
    for model in suite.models:
        model_payload = {"id": model.id, "revision": model.revision, "dtype": model.dtype}
        for task in suite.tasks:
            tp = task_payload(suite, task)
            reference_deps: dict[str, Node] = {}
            if suite.sft.enabled:
                reference_deps["reference"] = b.add(
                    "sft", {"model": model_payload, "task": tp, "sft": dataclasses.asdict(suite.sft),
                            "chat_template": suite.train.chat_template}, {}, label=f"sft {task}", heavy=True)
            reference = {"model": model_payload, **({"sft": reference_deps["reference"].key} if reference_deps else {})}
            prefdata = b.add("prefdata", {"model": model_payload, "task": tp,
                                          "prefdata": dataclasses.asdict(suite.prefdata),
                                          "backend": gen_default.backend, "dtype": gen_default.dtype},
                             dict(reference_deps), label=f"prefdata {task}", heavy=True)

            def generate_and_score(policy_deps: dict[str, Node], seed: int, gen: GenerationConfig,
                                   label: str) -> Node:
                gen_payload = {k: v for k, v in dataclasses.asdict(gen).items()
                               if k not in ("base_url", "serve_python", "api_key", "batch_size")}
                generate = b.add("generate", {"model": model_payload, "task": tp, "generation": gen_payload,
                                              "seed": seed, "reference": reference},
                                 policy_deps, label=f"generate {label} s{seed}", heavy=True)
                return b.add("score", {"model": model_payload, "task": tp, "score": dataclasses.asdict(suite.score),
                                       "seed": seed, "reference": reference},
                             {"samples": generate, **policy_deps}, label=f"score {label} s{seed}", heavy=True)

            def evaluate(policy_deps: dict[str, Node], label: str) -> dict[str, Node]:
                """One node per eval task on this policy. No seed in the key: the evaluation of one
                checkpoint is deterministic, so the reference's seeds share its evaluation."""
                return {name: b.add("evaluate", {"model": model_payload, "task": task_payload(suite, name),
                                                 "eval": eval_payload, "reference": reference},
                                    policy_deps, label=f"evaluate {name} {label}", heavy=True)
                        for name in suite.eval_tasks}

            for seed in suite.seeds:
                if suite.reference_row:
                    score = generate_and_score(dict(reference_deps), seed, gen_default, REFERENCE)
                    cells.append(Cell(task, model.id, REFERENCE, {}, seed, REFERENCE, score, None,
                                      evaluate(dict(reference_deps), REFERENCE)))

            train_nodes: dict[tuple[str, str, int], Node] = {}
            # DPO first: TIS-DPO's prep may reuse the suite's own DPO policy
            specs = sorted(suite.method_specs, key=lambda s: s.name != "dpo")
            for spec in specs:
                train_cfg = effective_section(suite.train, spec.train)
                gen = effective_section(gen_default, spec.generation)
                for point in spec.hyperparameter_points():
                    label = method_label(spec, point)
                    for seed in suite.seeds:
                        deps = {"prefdata": prefdata, **reference_deps}
                        prep = _prep_node(b, suite, spec, point, seed, prefdata, reference_deps, reference,
                                          model_payload, tp, train_nodes)
                        if prep is not None:
                            deps["prep"] = prep
                        train = b.add("train", {"model": model_payload, "method": spec.name, "hparams": point,
                                                "train": train_settings(train_cfg), "seed": seed,
                                                "reference": reference},
                                      deps, label=f"train {label} s{seed}", heavy=True)
                        train_nodes.setdefault((spec.name, stable_hash(point), seed), train)
                        score = generate_and_score({"policy": train, **reference_deps}, seed, gen, label)
                        evals = evaluate({"policy": train, **reference_deps}, f"{label} s{seed}")
                        cells.append(Cell(task, model.id, spec.name, point, seed, label, score, train, evals))
    return Plan(suite=suite, cells=cells, nodes=b.order)


def _prep_node(b: _Builder, suite: SuiteConfig, spec: MethodSpec, point: dict[str, Any], seed: int,
               prefdata: Node, reference_deps: dict[str, Node], reference: dict[str, Any],
               model_payload: dict[str, Any], tp: dict[str, Any],
               train_nodes: dict[tuple[str, str, int], Node]) -> Node | None:
    """Method-specific preparation. Today: TIS-DPO token weights (``needs`` has ``weights``).

    With ``tis.positive: suite_dpo`` the suite's own DPO policy of the same seed is pi_plus (the
    estimator then trains only the reverse-DPO model pi_minus).
    """
    import methods

    try:
        needs = methods.get(spec.name, **point).needs  # some methods set needs from hyperparameters
    except methods.MethodError:
        needs = frozenset()
    if "weights" not in needs:
        return None
    train_cfg = train_settings(effective_section(suite.train, spec.train))
    deps = {"prefdata": prefdata, **reference_deps}
    positive_beta = 0.1
    if suite.tis.estimator == "dpo_contrastive" and suite.tis.positive == "suite_dpo":
        dpo_spec = next((s for s in suite.method_specs if s.name == "dpo"), None)
        if dpo_spec is not None:
            dpo_point = dpo_spec.hyperparameter_points()[0]
            positive = train_nodes.get(("dpo", stable_hash(dpo_point), seed))
            if positive is not None:
                deps["positive"] = positive
                train_cfg = positive.params["train"]
                positive_beta = float(dpo_point.get("beta", positive_beta))
    return b.add("prep", {"kind": "tis_weights", "tis": dataclasses.asdict(suite.tis), "seed": seed,
                          "train": train_cfg, "beta": positive_beta, "model": model_payload,
                          "reference": reference},
                 deps, label=f"prep tis weights s{seed}", heavy=True)


def estimate_work(plan: Plan) -> dict[str, Any]:
    """Work units of the nodes (optimizer steps, sequences sampled, sequences teacher-forced)."""
    suite = plan.suite
    units: dict[str, int] = {}
    for node in plan.nodes:
        p = node.params
        if node.stage == "train":
            units["train_steps"] = units.get("train_steps", 0) + int(p["train"]["steps"] or 0)
        elif node.stage == "prep" and p.get("kind") == "tis_weights":
            # TIS-DPO's estimator trains pi_minus, and pi_plus too unless the suite's DPO is reused
            runs = 1 if "positive" in node.deps else 2
            units["train_steps"] = units.get("train_steps", 0) + runs * int(p["train"]["steps"] or 0)
        elif node.stage == "generate":
            g = p["generation"]
            units["sampled_sequences"] = units.get("sampled_sequences", 0) + (g["prompts"] or 0) * g["samples_per_prompt"]
        elif node.stage == "prefdata":
            d = p["prefdata"]
            if d["source"] != "dataset":
                units["sampled_sequences"] = units.get("sampled_sequences", 0) + (d["prompts"] or 0) * d["samples_per_prompt"]
        elif node.stage == "score" and suite.score.kl and "policy" in node.deps:  # reference vs itself: 0
            g = node.deps["samples"].params["generation"]
            units["kl_sequences"] = units.get("kl_sequences", 0) + (g["prompts"] or 0) * g["samples_per_prompt"]
        elif node.stage == "sft":
            units["sft_steps"] = units.get("sft_steps", 0) + int(p["sft"]["steps"] or 0)
        elif node.stage == "evaluate":
            units["model_evaluations"] = units.get("model_evaluations", 0) + 1
    return units


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
        cells.append({"task": cell.task, "model": cell.model, "label": cell.label, "seed": cell.seed,
                      "run_key": cell.score.key,
                      "stages": " ".join(f"{n.stage}:{status[(n.stage, n.key)]}" for n in chain)})
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
            "work_total": estimate_work(plan)}
