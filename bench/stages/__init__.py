"""Typed stages: each stage is a :class:`Stage` record (name, version, params type, run, work) defined
next to its code, and every plan node carries a frozen params dataclass of its stage's type.

==========  =======================  =========================================================
stage       module                   files it leaves in its output directory
==========  =======================  =========================================================
sft         ``bench.stages.train``   ``record.json`` with ``model_path`` (the SFT reference)
prefdata    ``bench.stages.data``    ``pairs.jsonl`` (prompt, chosen, rejected, meta), ``samples.jsonl`` when sampled
prep        ``bench.stages.prep``    ``pairs.jsonl``: the pairs plus what a method's preparation step adds
train       ``bench.stages.train``   ``record.json`` with ``model_path`` (the trained policy)
generate    ``bench.stages.evaluate``  ``samples.jsonl``: one Sample per line (prompt_id, index, prompt, completion)
score       ``bench.stages.evaluate``  ``scores.json``: task metrics, per-sample values, KL per sample
evaluate    ``bench.stages.evaluate``  ``results.json``: a model-evaluation task's metrics and per-item records
==========  =======================  =========================================================

A node's key is :func:`node_key`: the hash of its stage name and version, its params (fields marked
``key=False`` left out: they change how, not what, e.g. a backend's batch size) and the keys of its
inputs. Stage functions (``run(ctx, node, inputs, out_dir) -> record``) read only their typed params
and inputs and write only inside ``out_dir``; the store makes the result appear atomically.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from bench import interrupts
from bench.hashing import plain, stable_hash
from bench.store import StageOutput

if TYPE_CHECKING:
    from bench.plan import Node


def not_keyed(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A params field left out of the node key (how a stage runs, not what it computes)."""
    return dataclasses.field(default=default, metadata={"key": False}, **kwargs)


def key_payload(params: Any) -> dict[str, Any]:
    """The keyed fields of a params dataclass, nested dataclasses (e.g. a :class:`TaskRef`) included;
    configs contribute their ``semantic()`` view when they have one."""
    out = {}
    for f in dataclasses.fields(params):
        if f.metadata.get("key", True) is False:
            continue
        value = getattr(params, f.name)
        semantic = getattr(value, "semantic", None)
        if callable(semantic):
            out[f.name] = plain(semantic())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = key_payload(value)
        else:
            out[f.name] = plain(value)
    return out


@dataclass(frozen=True)
class Stage:
    """One kind of cached work: ``run`` computes it, ``work`` estimates its size for ``pobench plan`` and
    the run's ETA (unit -> amount; None when it cannot be known before the data is loaded)."""

    name: str
    version: str
    params: type
    run: Callable[["StageContext", "Node", dict[str, StageOutput], Path], dict[str, Any]]
    work: Callable[["Node"], dict[str, int | None]] = lambda node: {}
    #: heavy nodes ask Ray for the executor's per-cell CPU/GPU share
    heavy: bool = True
    #: (the plan's nodes of this stage) -> {(stage, key): what other nodes need from intermediate results that
    #: node computes anyway} (a training run's reference pass: the methods trained on the same pairs), so that
    #: it computes them in the same forwards (``Node.companions``). Never keyed, never needed for correctness
    companions: Callable[[Sequence["Node"]], dict[tuple[str, str], tuple]] = lambda nodes: {}


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    STAGES[stage.name] = stage
    return stage


def stage(name: str) -> Stage:
    _load_builtin_stages()
    return STAGES[name]


def _load_builtin_stages() -> None:
    if not STAGES:
        from bench.stages import data, evaluate, prep, train  # noqa: F401 - each registers its stages


def node_key(stage_name: str, params: Any, deps: dict[str, "Node"]) -> str:
    spec = stage(stage_name)
    if not isinstance(params, spec.params):
        raise TypeError(f"{stage_name} node: params must be {spec.params.__name__}, got {type(params).__name__}")
    return stable_hash({"stage": stage_name, "version": spec.version, "params": key_payload(params),
                        "deps": {k: f"{d.stage}/{d.key}" for k, d in sorted(deps.items())}})


# ----------------------------------------------------------------------------------------------
# what several stages share

@dataclass(frozen=True)
class ModelRef:
    """The base model a plan cell starts from (resolved to a local directory when a stage runs)."""

    id: str
    revision: str | None = None
    dtype: str = "float32"


@dataclass(frozen=True)
class TaskRef:
    """A task and its options (``tasks.get(name, **options)``); ``version`` re-keys nodes when a task
    changes, ``data`` when its data does (every stage that reads task data has a TaskRef)."""

    name: str
    version: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the data source resolved when planning (``Task.planned_source()``: kind, location, fingerprint;
    #: ``{"kind": "unavailable"}`` when none is): new or changed data recomputes what was built on the old
    data: dict[str, str] = dataclasses.field(default_factory=dict)
    #: prompts per split ("train", "eval") when the task knows them cheaply: the work estimate of ``prompts: null``
    prompt_counts: dict[str, int] = not_keyed(default_factory=dict)
    #: held-out preference pairs the task scores (``Task.eval_pairs()``; alignment accuracy): 0 = the
    #: task scores none, None = it does but the count is unknown when planning. The plan adds a
    #: ``pairs`` stage per policy when it is not 0.
    held_out_pairs: int | None = not_keyed(0)

    #: options that only say where data comes from; once resolved, ``data`` says what it is
    LOCATION_OPTIONS = ("source", "data_dir")

    def semantic(self) -> dict[str, Any]:
        """What keys a node: the resolved data replaces the options that point at it, so the same files
        in another folder (or ``source: auto`` resolving to what ``source: builtin`` names) share keys."""
        resolved = self.data and self.data.get("kind") != "unavailable"
        options = {k: v for k, v in self.options.items() if not (resolved and k in self.LOCATION_OPTIONS)}
        return {"name": self.name, "version": self.version, "options": plain(options), "data": dict(self.data)}


@dataclass
class StageContext:
    """Where stages keep state that outlives a stage directory (the trainers' resumable runs)."""

    work_dir: Path

    def trainer_dir(self, node: "Node") -> Path:
        """A stable directory for the trainer's own resumable run (checkpoints survive kill -9).

        It is not inside the stage's partial directory because the trainer records absolute paths
        (``result.json``) that must stay valid after the stage output is renamed into place.
        """
        return Path(self.work_dir) / "trainer" / f"{node.stage}-{node.key}"

    @staticmethod
    def task(ref: TaskRef):
        import tasks

        return tasks.get(ref.name, **ref.options)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def base_model_path(model: ModelRef) -> tuple[str, dict[str, Any]]:
    from bench.models import resolve_model

    resolved = resolve_model(model.id)
    return resolved.path, {"model_id": resolved.model_id, "model_source": resolved.source,
                           "model_path": resolved.path, **({"model_details": resolved.details}
                                                           if resolved.details else {})}


def reference_path(model: ModelRef, inputs: dict[str, StageOutput]) -> str:
    """The reference policy: the SFT output when the suite has SFT, else the base model."""
    if "reference" in inputs:
        return inputs["reference"].record["model_path"]
    return base_model_path(model)[0]


def policy_path(model: ModelRef, inputs: dict[str, StageOutput], step: int | None = None) -> str:
    """The trained policy (its snapshot at optimizer ``step`` when given: ``train.eval_at_steps``), or
    the reference when the node has no ``policy`` input (the reference row)."""
    if "policy" not in inputs:
        return reference_path(model, inputs)
    record = inputs["policy"].record
    if step is None or step == record.get("steps"):
        return record["model_path"]
    policies = record.get("policies") or {}
    if str(step) not in policies:
        raise RuntimeError(f"the training run {inputs['policy'].key} saved no policy at step {step} "
                           f"(saved: {sorted(policies, key=int)}); add it to train.eval_at_steps")
    return policies[str(step)]


def execute_node(ctx: StageContext, store: Any, node: "Node") -> tuple[StageOutput, bool]:
    """Run one node through the store (skipped when its output exists and passes the store's cheap
    check). Its inputs are checked in full (checksums) only when the node is computed, just before
    they are read; an input that is missing, or damaged (the store moves it aside), is computed again
    first. The trainer's run directory of the node is the store's ``owned`` directory of the entry
    (checksummed and moved aside with it). An exception leaving a stage carries ``pobench_stage``
    (the node's label, e.g. ``"train dpo(beta=0.1) s0"``), which the command line puts in its one-line error."""
    run = stage(node.stage).run

    def compute(out: Path) -> dict[str, Any]:
        from bench.progress import computing
        from bench.resources import PeakRSS, release_memory

        computing()  # the run display quiets the model libraries' bars and logs (imported from here on)
        inputs = {name: finished_input(ctx, store, dep) for name, dep in node.deps.items()}
        release_memory()  # what earlier stages freed is returned first, so the peak is this stage's
        with PeakRSS() as peak:  # in the record for `pobench bench suite` and the memory targets
            fields = run(ctx, node, inputs, out) or {}
        return {**fields, "peak_rss_mb": peak.peak_mb, "rss_before_mb": peak.start_mb}

    try:
        return store.run(node.stage, node.key, compute, owned=[ctx.trainer_dir(node)], label=node.label,
                         inputs={"label": node.label, "params": plain(node.params),
                                 "deps": {k: f"{d.stage}/{d.key}" for k, d in node.deps.items()}})
    except Exception as exc:
        if interrupts.requested(exc):  # Ctrl-C landed in a library callback that wrapped it in its own error
            raise KeyboardInterrupt from exc
        if not hasattr(exc, "pobench_stage"):  # the innermost stage is where it happened
            try:
                exc.pobench_stage = node.label
            except (AttributeError, TypeError):
                pass
        raise


def finished_input(ctx: StageContext, store: Any, dep: "Node") -> StageOutput:
    """A node's input, verified in full; computed (again) when it is not there or was found damaged."""
    done = store.get(dep.stage, dep.key)
    if done is None:
        execute_node(ctx, store, dep)
        done = store.get(dep.stage, dep.key)
    if done is None:
        raise RuntimeError(f"input {dep.stage} {dep.label} ({dep.stage}/{dep.key}) is damaged again right after "
                           f"it was computed; check the disk of the work dir {store.root}")
    return done


def ensure_threads() -> None:
    """Respect OMP_NUM_THREADS for torch when the user set it (shared machines)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))

