"""Evaluation stages: ``generate`` (sample held-out prompts from a policy or the reference),
``score`` (the task's judges and metrics, KL to the reference), ``pairs`` (held-out preference pairs
teacher-forced for the implicit-reward metrics, which score reads) and ``evaluate``
(a model-evaluation task such as lm-eval reasoning on a checkpoint)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config.schema import GenerationConfig, ScoreConfig
from bench.prompts import PromptFormat
from bench.stages import (ModelRef, Stage, StageContext, TaskRef, not_keyed, policy_path, read_jsonl,
                          reference_path, register_stage)
from bench.stages.data import merge_adapter, rows_to_samples, sample, sample_to_row, sampling_for
from bench.store import StageOutput, atomic_write_json, atomic_write_jsonl

if TYPE_CHECKING:
    from bench.plan import Node


# ----------------------------------------------------------------------------------------------
# generate

@dataclass(frozen=True)
class GenerateParams:
    model: ModelRef
    task: TaskRef
    #: the policy's own (method-overridden) generation section; its backend_options are not keyed
    generation: GenerationConfig
    prompt_format: PromptFormat
    seed: int
    #: the policy's optimizer step to evaluate (a ``train.eval_at_steps`` snapshot); None = the final policy
    step: int | None = None


def run_generate(ctx: StageContext, node: "Node", inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    p: GenerateParams = node.params
    g = p.generation
    task = ctx.task(p.task)
    prompts = task.eval_prompts(limit=g.prompts)
    sampling = sampling_for(task, n=g.samples_per_prompt, max_new_tokens=g.max_new_tokens,
                            temperature=g.temperature, top_p=g.top_p, draws=g.draws)
    samples, info = sample(g.backend, g.backend_options, policy_path(p.model, inputs, p.step), g.dtype, out, prompts,
                           sampling, p.seed, p.prompt_format)
    atomic_write_jsonl(out / "samples.jsonl", [sample_to_row(s) for s in samples])
    return {**info, "samples": len(samples), "prompts": len(prompts), "sampling": sampling.as_dict(),
            "backend_options": g.backend_options, "task_record": task.record()}


def generate_work(node: "Node") -> dict[str, int | None]:
    g: GenerationConfig = node.params.generation
    prompts = g.prompts if g.prompts is not None else node.params.task.prompt_counts.get("eval")
    return {"sampled_sequences": None if prompts is None else prompts * g.samples_per_prompt}


# ----------------------------------------------------------------------------------------------
# score

@dataclass(frozen=True)
class ScoreParams:
    model: ModelRef
    task: TaskRef
    score: ScoreConfig
    prompt_format: PromptFormat
    seed: int
    step: int | None = None
    #: sequences the generate stage produces (for the work estimate only; None: unknown before loading)
    sequences: int | None = not_keyed(0)


def kl_unavailable(sampling: dict[str, Any]) -> str | None:
    """Why a Monte-Carlo KL(policy || reference) cannot be estimated from these samples (None = it can).

    sum_t log pi(y_t) - log ref(y_t) estimates the KL only for samples drawn from pi itself: at
    temperature 1 with no top-p/top-k truncation. Greedy or tempered samples come from another
    distribution, and the number would not be a KL."""
    temperature, top_p, top_k = sampling.get("temperature", 1.0), sampling.get("top_p", 1.0), sampling.get("top_k")
    if temperature != 1.0:
        return (f"samples drawn at temperature {temperature}"
                + (" (greedy)" if temperature == 0 else "") + ": KL needs samples from the policy itself (temperature 1)")
    if top_p < 1.0 or top_k:
        return f"samples truncated (top_p={top_p}, top_k={top_k}): KL needs untruncated samples"
    return None


def kl_from_samples(samples: list[Any], policy: str, reference: str, cfg: ScoreConfig,
                    prompt_format: PromptFormat) -> str:
    """Set ``sample.kl`` = sum_t log pi(y_t) - log ref(y_t) for every sample; returns how it was computed.

    ``kl_source: sampler``: samples that carry the sampled token ids and the policy's log-probs from
    the backend need only a reference forward over those ids (EOS included); the others, and every
    sample with ``kl_source: teacher_forcing``, are re-scored as text by both models."""
    from bench import teacher_forcing

    drawn = [s for s in samples if cfg.kl_source == "sampler" and s.logprobs is not None
             and (s.meta or {}).get("token_ids") is not None and len(s.logprobs) == len(s.meta["token_ids"])]
    if drawn:
        ref = teacher_forcing.reference_logps(reference, [s.prompt for s in drawn], [s.meta["token_ids"] for s in drawn],
                                              batch_size=cfg.kl_batch_size, dtype=cfg.kl_dtype,
                                              prompt_format=prompt_format)
        for s, lr in zip(drawn, ref):
            s.kl = float(sum(s.logprobs) - sum(lr))
    rest = [s for s in samples if s.kl is None]
    if rest:
        kls = teacher_forcing.sequence_kl(policy, reference, [s.prompt for s in rest], [s.completion for s in rest],
                                          batch_size=cfg.kl_batch_size, dtype=cfg.kl_dtype,
                                          prompt_format=prompt_format)
        for s, kl in zip(rest, kls):
            s.kl = kl
    return (f"sampler log-probs + reference forward for {len(drawn)} samples; teacher forcing of both models "
            f"for {len(rest)}")


def run_score(ctx: StageContext, node: "Node", inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    p: ScoreParams = node.params
    cfg = p.score
    task = ctx.task(p.task)
    samples = rows_to_samples(read_jsonl(inputs["samples"].path / "samples.jsonl"))
    policy, reference = policy_path(p.model, inputs, p.step), reference_path(p.model, inputs)
    is_reference = "policy" not in inputs
    pair_logps = None
    notes: dict[str, str] = {}
    kl_reason = kl_unavailable(inputs["samples"].record.get("sampling", {})) if cfg.kl else "score.kl is false"
    if kl_reason is not None:
        notes["kl"] = kl_reason
    else:
        if is_reference:
            for s in samples:  # the reference against itself: exactly zero, no forward needed
                s.kl = 0.0
        else:
            notes["kl_source"] = kl_from_samples(samples, policy, reference, cfg, p.prompt_format)
    if "pairs" in inputs:  # held-out pairs teacher-forced by the pairs stage (alignment accuracy)
        pair_logps = read_pair_logps(inputs["pairs"])
    scores = task.score(samples, pair_logps=pair_logps)
    notes.update(scores.details.get("notes") or {})  # the task's notes on its metrics (e.g. "by construction")
    metrics = dict(scores.metrics)
    per_sample = scores.per_sample
    for row, s in zip(per_sample, samples):
        if s.kl is not None:
            row.setdefault("kl", s.kl)
    if kl_reason is None and "kl" not in metrics and samples:
        metrics["kl"] = sum(s.kl for s in samples) / len(samples)
    task_record = task.record()
    if not task_record.get("data_source"):  # scoring reads no data: the generate stage knows the source
        task_record["data_source"] = inputs["samples"].record.get("task_record", {}).get("data_source")
    directions = {m.name: m.higher_is_better for m in task.metrics}
    directions.setdefault("kl", False)
    written = {"metrics": metrics, "per_sample": per_sample, "details": scores.details, "directions": directions,
               "task_record": task_record, "notes": notes}
    if scores.per_pair:  # per held-out pair values (alignment_accuracy): the unit of their CIs
        written["per_pair"] = scores.per_pair
    atomic_write_json(out / "scores.json", written)
    return {"metrics": metrics, "notes": notes, "kl_budget_exceeded": bool(metrics.get("kl", 0.0) > cfg.kl_budget)}


def score_work(node: "Node") -> dict[str, int]:
    gen = node.deps["samples"].params.generation
    if (not node.params.score.kl or "policy" not in node.deps  # the reference against itself: no forward
            or kl_unavailable({"temperature": gen.temperature, "top_p": gen.top_p})):
        return {}
    return {"kl_sequences": node.params.sequences}


# ----------------------------------------------------------------------------------------------
# pairs

@dataclass(frozen=True)
class PairsParams:
    """The held-out pairs of a task (``Task.eval_pairs()``) teacher-forced under one policy, for the
    implicit-reward metrics (alignment accuracy). A stage of its own, not part of score: it reads no
    samples, so it is computed once per policy (not per sampling seed or generation setting), the
    reference's pass once per suite, and the score stage's time is that of scoring the samples."""

    model: ModelRef
    task: TaskRef
    prompt_format: PromptFormat
    dtype: str
    step: int | None = None
    #: pairs per forward (token budgets split further): how it runs, not what it computes
    batch_size: int = not_keyed(32)


PAIR_LOGPS_FILE = "pair_logps.jsonl"


def run_pairs(ctx: StageContext, node: "Node", inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    """Summed log-probs of each held-out pair's chosen and rejected response under the policy (the
    reference when the node has no ``policy`` input), next to the reference's, which a policy's node
    reads from the reference's own pairs stage (``reference_pairs``)."""
    from bench import teacher_forcing

    p: PairsParams = node.params
    pairs = ctx.task(p.task).eval_pairs()
    if not pairs:
        raise RuntimeError(f"task {p.task.name!r} gave no held-out pairs to score (Task.eval_pairs() is empty)")
    model = policy_path(p.model, inputs, p.step)
    chosen, rejected, vocabulary = teacher_forcing.summed_pair_logps(
        model, pairs, batch_size=p.batch_size, dtype=p.dtype, prompt_format=p.prompt_format)
    ids = [pair.id or str(i) for i, pair in enumerate(pairs)]
    if "reference_pairs" in inputs:
        reference = inputs["reference_pairs"]
        if reference.record.get("vocabulary") != vocabulary:
            raise RuntimeError(f"the policy {model} and the reference ({reference.record.get('model')}) use different "
                               "tokenizers: implicit rewards compare their log-probs over the same tokens")
        ref_rows = read_jsonl(reference.path / PAIR_LOGPS_FILE)
        if [r["pair_id"] for r in ref_rows] != ids:
            raise RuntimeError(f"the reference's held-out pairs ({reference.path}) are not this task's: "
                               "same task, options and data are expected")
        ref_chosen, ref_rejected = [r["ref_chosen"] for r in ref_rows], [r["ref_rejected"] for r in ref_rows]
    else:  # the reference itself: its implicit margins are 0 by construction
        ref_chosen, ref_rejected = chosen, rejected
    rows = [{"pair_id": i, "policy_chosen": c, "policy_rejected": r, "ref_chosen": rc, "ref_rejected": rr}
            for i, c, r, rc, rr in zip(ids, chosen, rejected, ref_chosen, ref_rejected)]
    atomic_write_jsonl(out / PAIR_LOGPS_FILE, rows)
    return {"pairs": len(rows), "model": model, "vocabulary": vocabulary,
            "is_reference": "policy" not in inputs}


def read_pair_logps(output: StageOutput) -> list[Any]:
    from tasks.base import PairLogps

    return [PairLogps(**row) for row in read_jsonl(output.path / PAIR_LOGPS_FILE)]


def pairs_work(node: "Node") -> dict[str, int | None]:
    count = node.params.task.held_out_pairs
    return {"pair_sequences": None if count is None else 2 * count}


# ----------------------------------------------------------------------------------------------
# evaluate

@dataclass(frozen=True)
class EvaluateParams:
    model: ModelRef
    task: TaskRef
    limit: int | None
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    #: where a checkpoint is evaluated does not change what is measured
    device: str = not_keyed("auto")


def evaluation_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_evaluate(ctx: StageContext, node: "Node", inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    """A model-evaluation task (``evaluation == "model"``, e.g. lm-eval reasoning) on the policy or reference.

    A PEFT adapter goes to the task as is when the task evaluates with transformers (its ``backend``
    option resolves to ``hf``; lm-eval's hf model applies the adapter), else it is merged first
    (vLLM and servers need full weights), like the generate stage does.
    """
    from bench.backends import vllm_available

    p: EvaluateParams = node.params
    task = ctx.task(p.task)
    checkpoint = model = policy_path(p.model, inputs)
    given_as = "full weights"
    if (Path(checkpoint) / "adapter_config.json").is_file():
        backend = getattr(task, "backend", None)  # the task's own option (reasoning: hf | vllm | auto)
        if backend == "hf" or (backend == "auto" and not vllm_available()):
            given_as = "PEFT adapter"
        else:
            model, given_as = merge_adapter(checkpoint, out / "merged"), "merged PEFT adapter"
    kwargs: dict[str, Any] = {"limit": p.limit, "device": evaluation_device(p.device)}
    if p.gen_kwargs:
        kwargs["gen_kwargs"] = dict(p.gen_kwargs)
    try:
        scores = task.evaluate_model(model, **kwargs)
    finally:
        shutil.rmtree(out / "merged", ignore_errors=True)  # merged weights were only for the evaluator
    metrics = {k: float(v) for k, v in scores.metrics.items()}
    # standard errors as the evaluator reports them (lm-eval: over benchmark items); "N/A" etc. dropped
    stderr = {k: float(v) for k, v in (scores.details.get("stderr") or {}).items()
              if k in metrics and isinstance(v, (int, float)) and not isinstance(v, bool)}
    # declared directions first; an evaluator may report the directions of metrics a task cannot
    # declare in advance (lm-eval groups such as the Open LLM Leaderboard v2)
    reported = scores.details.get("higher_is_better") or {}
    directions = {k: v for k, v in reported.items() if k in metrics and isinstance(v, bool)}
    directions.update({m.name: m.higher_is_better for m in task.metrics})
    task_record = task.record()
    atomic_write_json(out / "results.json", {"metrics": metrics, "stderr": stderr, "directions": directions,
                                             "per_sample": scores.per_sample, "details": scores.details,
                                             "task_record": task_record, "checkpoint": checkpoint,
                                             "given_as": given_as})
    return {"metrics": metrics, "stderr": stderr, "task_record": task_record, "checkpoint": checkpoint,
            "given_as": given_as, "limit": p.limit, "device": kwargs["device"]}


GENERATE = register_stage(Stage("generate", "2", GenerateParams, run_generate, generate_work))
SCORE = register_stage(Stage("score", "3", ScoreParams, run_score, score_work))
#: pairs 2: completion rows in padded-token groups (teacher_forcing.COMPLETION_GROUP_TOKENS), values
#: differ from version 1 by float32 rounding (<= 9e-5 nats on HH)
PAIRS = register_stage(Stage("pairs", "2", PairsParams, run_pairs, pairs_work))
EVALUATE = register_stage(Stage("evaluate", "2", EvaluateParams, run_evaluate,
                                lambda node: {"model_evaluations": 1}))
