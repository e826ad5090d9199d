"""Training stages: ``sft`` (the reference, when a suite asks for it) and ``train`` (one method, one
hyperparameter point, one seed). Both hand the trainer its own config (:mod:`bench.train.config`):
the suite's section with the run identity (model directory, seed) filled in."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from bench.config.schema import SuiteSFTConfig, SuiteTrainConfig
from bench.hashing import plain, stable_hash
from bench.stages import (ModelRef, Stage, StageContext, TaskRef, base_model_path, read_jsonl, reference_path,
                          register_stage)
from bench.stages.data import expected_pairs, load_pairs
from bench.store import StageOutput

if TYPE_CHECKING:
    from bench.plan import Node


def train_record(result: Any) -> dict[str, Any]:
    return {"model_path": str(result.model_path), "trainer_dir": str(result.output_dir), "steps": result.steps,
            "final_loss": result.final_loss, "train_metrics": result.metrics, "data_report": result.data,
            "train_runtime_s": result.runtime_s, "resumed_from_step": result.resumed_from_step,
            "trainer_fingerprint": result.fingerprint, "policies": result.extra.get("policies", {})}


def trainer_config(train: SuiteTrainConfig, model_path: str, seed: int):
    """The trainer's config for one run: the suite section plus the run identity (no progress bar in stages)."""
    from bench.train import PreferenceTrainConfig

    return PreferenceTrainConfig.model_validate({**train.all_fields(), "model": model_path, "seed": seed,
                                                 "progress_bar": False})


# ----------------------------------------------------------------------------------------------
# sft

@dataclass(frozen=True)
class SFTParams:
    model: ModelRef
    task: TaskRef
    sft: SuiteSFTConfig
    #: the suite's prompt format (train.chat_template, train.max_prompt_length): SFT trains on it too
    prompt_fields: dict[str, Any]
    seed: int = 0


def run_sft(ctx: StageContext, node: "Node", inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    from bench.train import train_sft

    p: SFTParams = node.params
    task = ctx.task(p.task)
    examples = task.sft_data(limit=p.sft.max_examples)
    base, model_info = base_model_path(p.model)
    config = p.sft.trainer_config(base, p.seed, {**p.prompt_fields, "progress_bar": False})
    result = train_sft(config, [{"prompt": e.prompt, "completion": e.completion} for e in examples],
                       ctx.trainer_dir(node))
    return {"examples": len(examples), "task_record": task.record(), **model_info, **train_record(result)}


def optimizer_steps(config: Any, examples: int | None) -> int | None:
    """Optimizer steps of a run on one process: ``steps``, else ``epochs`` x examples / (batch_size x
    grad_accum) as the trainer counts them (``bench.train.engine.total_steps``); None when the
    number of examples is unknown."""
    if config.steps > 0:
        return config.steps
    if examples is None:
        return None
    return max(1, math.ceil(config.epochs * examples / (config.batch_size * config.grad_accum)))


def sft_work(node: "Node") -> dict[str, int | None]:
    return {"sft_steps": optimizer_steps(node.params.sft, node.params.sft.max_examples)}


# ----------------------------------------------------------------------------------------------
# train

@dataclass(frozen=True)
class TrainParams:
    model: ModelRef
    method: str
    #: the method's full hyperparameters (defaults included), so `dpo: {}` and `dpo: {beta: 0.1}` share a key
    hparams: dict[str, Any]
    train: SuiteTrainConfig
    seed: int
    #: train on the pairs with chosen and rejected swapped (e.g. a reverse-DPO model for TIS-DPO's weights)
    swap_pairs: bool = False

    def __post_init__(self) -> None:
        # a train field that this method's training never reads is set to its earlier value (left out of
        # the key), so changing it, or its default, does not retrain methods it cannot affect
        from bench.train.preference import unread_train_fields

        unread = unread_train_fields(self.method, self.hparams, self.train)
        if unread:
            object.__setattr__(self, "train", self.train.model_copy(update=unread))


def run_train(ctx: StageContext, node: "Node", inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    import methods
    from bench.train import train_preference

    p: TrainParams = node.params
    # a method's preparation step (if any) wrote the pairs it trains on, extra fields included
    pairs = read_jsonl(inputs["prep"].path / "pairs.jsonl") if "prep" in inputs else \
        load_pairs(inputs["prefdata"], swap=p.swap_pairs)
    method = methods.get(p.method, **p.hparams)
    config = trainer_config(p.train, reference_path(p.model, inputs), p.seed)
    share_with = [(methods.get(name, **json.loads(hparams)), json.loads(settings))
                  for name, hparams, settings in node.companions]
    result = train_preference(config, pairs, method, ctx.trainer_dir(node), share_with=share_with,
                              swapped_pairs=p.swap_pairs)
    return {"method": p.method, "hparams": method.hparams(), **train_record(result)}


def train_work(node: "Node") -> dict[str, int | None]:
    """Epoch-based runs: at most one pair per preference prompt (pairs below the margin are dropped)."""
    prefdata = node.deps.get("prefdata")
    return {"train_steps": optimizer_steps(node.params.train, expected_pairs(prefdata) if prefdata else None)}


def reference_pass_identity(node: "Node") -> str:
    """What a training run's reference pass is over: reference, pairs, tokenization and precision (runs with
    the same identity tokenize the same sequences; a swapped run's pass is the unswapped one's, a
    preparation step's pairs are the preference pairs with extra fields)."""
    p: TrainParams = node.params
    train = p.train
    return stable_hash({"model": plain(p.model), "reference": node.deps["reference"].key if "reference" in node.deps
                        else None, "pairs": node.deps["prefdata"].key if "prefdata" in node.deps else node.key,
                        "lora": train.lora is not None, "tokens": [train.max_length, train.max_prompt_length,
                                                                    train.add_eos, train.chat_template],
                        "precision": train.precision, "reference_dtype": train.reference_dtype})


def train_companions(nodes: Sequence["Node"]) -> dict[tuple[str, str], tuple]:
    """For each training node, the other runs on its reference pass, sorted and without repeats: (method,
    hparams, the train settings that decide what a run reads from the pass), each as JSON. The run
    computes what they need from the reference in its own forwards
    (:func:`bench.train.preference.kinds_along`), so the runs of a suite split one pass between them."""
    def describe(n: "Node") -> tuple[str, str, str]:
        train = n.params.train.all_fields()
        return (n.params.method, json.dumps(plain(n.params.hparams), sort_keys=True),
                json.dumps({field: train.get(field) for field in COMPANION_FIELDS}, sort_keys=True))

    described = {(n.stage, n.key): (reference_pass_identity(n), describe(n)) for n in nodes}
    on_pass: dict[str, set[tuple[str, str, str]]] = {}
    for identity, description in described.values():
        on_pass.setdefault(identity, set()).add(description)
    return {ident: tuple(sorted(on_pass[identity] - {description}))
            for ident, (identity, description) in described.items()}


#: the train settings (besides the pass identity) that decide which reference kinds a run reads (a method
#: that reads no token-level values has token_reference "online" in its key whatever the suite says)
COMPANION_FIELDS = ("token_reference", "precompute_reference")


SFT = register_stage(Stage("sft", "2", SFTParams, run_sft, sft_work))
TRAIN = register_stage(Stage("train", "2", TrainParams, run_train, train_work, companions=train_companions))
