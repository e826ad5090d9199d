"""The ``prep`` stage: a method's own preparation step, run between the preference data and its training.

A method declares the step it needs by name (``Method.preparation``, e.g. TIS-DPO: ``"tis_weights"``);
the planner looks the step up in :data:`PREPARATIONS` and never names a method. A step is a
:class:`PreparationStep`: its options model (the suite's ``preparation.<name>`` section), ``plan``
(which extra nodes it depends on; it may ask for training runs, which are shared BY KEY with the
suite's own rows when they are the same run) and ``run`` (writes ``pairs.jsonl``: the pairs plus
the fields the method's ``needs`` read, e.g. token weights).

Third-party steps register under the ``pobench.preparations`` entry-point group (value
``module:ClassName`` of a :class:`PreparationStep` subclass).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel

from bench.registry import Registry
from bench.stages import Stage, StageContext, register_stage
from bench.stages.train import TrainParams
from bench.store import StageOutput

if TYPE_CHECKING:
    from bench.plan import Node


class PreparationError(ValueError):
    """An unknown or unloadable preparation step."""


@dataclass(frozen=True)
class PrepParams:
    step: str
    step_version: str
    #: the step's validated options (``preparation.<step>`` of the suite), as plain data
    options: dict[str, Any]
    #: the training run this step prepares (its method, hyperparameters, recipe, seed and model)
    run: TrainParams


@dataclass
class PrepRequest:
    """What the planner tells a step about the run it prepares, and how the step asks for training runs."""

    options: BaseModel
    params: PrepParams
    #: ``train_node(method, hparams, swap_pairs=False) -> Node``: a training run on this cell's
    #: preference data, reference, recipe and seed (the suite's own node when it has the same key)
    train_node: Callable[..., "Node"]
    deps: dict[str, "Node"] = field(default_factory=dict)


class PreparationStep:
    """Base class of preparation steps (one module per step)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    options_model: ClassVar[type[BaseModel]]

    def plan(self, request: PrepRequest) -> dict[str, "Node"]:
        """Extra input nodes of the prep node (``prefdata`` and the reference are always inputs)."""
        return {}

    def run(self, ctx: StageContext, node: "Node", inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
        raise NotImplementedError

    def work(self, node: "Node") -> dict[str, int]:
        return {}


PREPARATIONS: Registry[PreparationStep] = Registry(
    "preparation step", "pobench.preparations", base=PreparationStep, error=PreparationError,
    builtins={"tis_weights": "bench.stages.tis_weights:TISWeights"})


def preparation_steps() -> dict[str, PreparationStep]:
    return {name: PREPARATIONS.get_class(name)() for name in PREPARATIONS.available()}


def preparation_step(name: str) -> PreparationStep:
    return PREPARATIONS.get_class(name)()


def run_prep(ctx: StageContext, node: "Node", inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    return {"step": node.params.step, **preparation_step(node.params.step).run(ctx, node, inputs, out)}


def prep_work(node: "Node") -> dict[str, int]:
    return preparation_step(node.params.step).work(node)


PREP = register_stage(Stage("prep", "2", PrepParams, run_prep, prep_work))
