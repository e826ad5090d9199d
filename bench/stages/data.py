"""Data stages: ``prefdata`` (the preference pairs every method of a cell trains on), plus the
helpers that turn samples and pairs into rows and back, and the one place a stage builds a
generation backend."""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from bench.config.schema import PrefDataConfig
from bench.prompts import PromptFormat
from bench.stages import (ModelRef, Stage, StageContext, TaskRef, not_keyed, read_jsonl, reference_path,
                          register_stage)
from bench.store import StageOutput, atomic_write_jsonl

if TYPE_CHECKING:
    from bench.plan import Node


# ----------------------------------------------------------------------------------------------
# shared helpers

def sample_to_row(sample: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(sample).items() if v is not None and v != {}}


def rows_to_samples(rows: Sequence[dict[str, Any]]) -> list[Any]:
    from tasks.base import Sample

    return [Sample(**row) for row in rows]


def load_pairs(prefdata: StageOutput, swap: bool = False) -> list[dict[str, Any]]:
    """The pairs of a ``prefdata`` (or ``prep``) output as trainer rows, chosen/rejected swapped on request."""
    rows = read_jsonl(prefdata.path / "pairs.jsonl")
    if swap:
        rows = [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} for row in rows]
    return rows


def sampling_for(task: Any, *, n: int, max_new_tokens: int, temperature: float, top_p: float, draws: str):
    return task.sampling.replace(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 draws=draws)


def merge_adapter(adapter_dir: str, target: Path) -> str:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    if not (target / "config.json").is_file():
        model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, dtype=torch.float32).merge_and_unload()
        model.save_pretrained(target)
        AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(target)
    return str(target)


def make_backend(name: str, options: dict[str, Any], model_path: str, dtype: str, out_dir: Path,
                 sampled_tokens: int | None = None):
    """A backend for ``model_path`` with the node's own backend options (``auto`` weighs
    ``sampled_tokens``). vLLM and servers need full weights: a PEFT adapter is merged first (into
    ``out_dir/merged``, removed afterwards)."""
    from bench.backends import get_backend, resolve_backend_name

    resolved = resolve_backend_name(name, sampled_tokens)
    if resolved != "hf" and (Path(model_path) / "adapter_config.json").is_file():
        model_path = merge_adapter(model_path, out_dir / "merged")
    # auto keeps the picked one's options
    return get_backend(name, model_path, dtype=dtype, options=options, sampled_tokens=sampled_tokens)


def sample(backend_name: str, options: dict[str, Any], model_path: str, dtype: str, out_dir: Path, prompts: Sequence[Any],
           sampling: Any, seed: int, prompt_format: PromptFormat) -> tuple[list[Any], dict[str, Any]]:
    """Sample ``prompts`` once with a fresh backend; returns the samples and what the backend reports."""
    tokens = len(prompts) * max(1, int(sampling.n)) * int(sampling.max_new_tokens)
    backend = make_backend(backend_name, options, model_path, dtype, out_dir, sampled_tokens=tokens)
    try:
        samples = backend.generate(prompts, sampling, seed=seed, prompt_format=prompt_format)
        info = {"backend": backend.name, "generation_stats": dict(backend.stats)}
    finally:
        backend.close()
        shutil.rmtree(out_dir / "merged", ignore_errors=True)  # merged weights were only for the backend
    return samples, info


# ----------------------------------------------------------------------------------------------
# prefdata

@dataclass(frozen=True)
class PrefDataParams:
    model: ModelRef
    task: TaskRef
    prefdata: PrefDataConfig
    #: the format the pairs are trained with: reference samples are drawn on the same prompt ids
    prompt_format: PromptFormat
    backend: str
    dtype: str
    backend_options: dict[str, Any] = not_keyed(default_factory=dict)


def no_pairs_message(task: Any, source: str, cfg: PrefDataConfig, samples: Sequence[Any] | None,
                     rewards: Sequence[float] | None) -> str:
    """Why ``prefdata`` got no pair, from what it saw, and the setting that would help (``min_margin``
    only when a gap exists and the margin is what cut it)."""
    head = f"prefdata for task {task.name!r}: no usable preference pair (prefdata.source: {source})"
    if samples is None:  # the task's own preference dataset
        skipped = len(task.skipped_records()) if hasattr(task, "skipped_records") else 0
        return (f"{head}: the task's preference data gave none"
                + (f" ({skipped} malformed records were skipped)" if skipped else "")
                + f"; check its data source (`pobench tasks {task.name}`) and prefdata.prompts={cfg.prompts}")
    more = ("raise prefdata.samples_per_prompt (now {}) or prefdata.temperature (now {}), add prompts "
            "(prefdata.prompts: {}), or start from a policy whose samples differ in quality (an SFT stage)"
            ).format(cfg.samples_per_prompt, cfg.temperature, cfg.prompts)
    if rewards is None:  # pairwise ranking
        return f"{head}: the pairwise judge told none of {len(samples)} samples apart; {more}"
    explain = getattr(task, "no_pairs_advice", None)  # a plugin task may predate the hook
    settings = {"samples_per_prompt": cfg.samples_per_prompt, "temperature": cfg.temperature, "prompts": cfg.prompts}
    advice = explain(samples, rewards, settings) if callable(explain) else None
    if advice:  # the task's own pairing rules (code tasks: passing vs failing programs, reference fallback)
        return f"{head}: {advice}"
    by_prompt: dict[str, list[float]] = {}
    for sample, reward in zip(samples, rewards):
        by_prompt.setdefault(sample.prompt_id, []).append(reward)
    gaps = [max(r) - min(r) for r in by_prompt.values() if len(r) >= 2]
    try:
        judge = f"scored by {task.judge.label}"
    except Exception:  # a task scoring without a judge (code tasks: their tests)
        judge = "scored by the task"
    seen = f"{len(samples)} samples of {len(by_prompt)} prompts {judge}"
    if not gaps:
        return f"{head}: {seen}, fewer than 2 per prompt; set prefdata.samples_per_prompt to 2 or more"
    if max(gaps) == 0:
        values = sorted(set(rewards))
        shown = f"all {values[0]:g}" if len(values) == 1 else f"{len(values)} distinct scores, equal within each prompt"
        return f"{head}: {seen}: every prompt's samples got the same score ({shown}), so no sample is preferred; {more}"
    if cfg.min_margin > 0 and not any(gap > cfg.min_margin for gap in gaps):
        return (f"{head}: {seen}: the largest score gap within a prompt is {max(gaps):.3g}, not above "
                f"prefdata.min_margin={cfg.min_margin}; lower prefdata.min_margin below {max(gaps):.3g}, or {more}")
    return (f"{head}: {seen}: {sum(g > cfg.min_margin for g in gaps)} prompt(s) have a better and a worse sample, "
            f"but the task paired none of them (identical texts, or its own pairing rules); {more}")


def run_prefdata(ctx: StageContext, node: "Node", inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    p: PrefDataParams = node.params
    cfg = p.prefdata
    task = ctx.task(p.task)
    source = cfg.source
    if source == "task_default":
        source = "dataset" if task.preference_mode == "dataset" else "sample_and_judge"
    info: dict[str, Any] = {"source": source}
    if source != "sample_and_judge" and cfg.pairs != "best_worst":
        from tasks.errors import TaskError

        raise TaskError(f"prefdata.pairs: {cfg.pairs} pairs the judged samples of prefdata.source "
                        f"sample_and_judge; task {task.name!r} gets its pairs by {source}")
    if source == "dataset":
        pairs = task.preference_data(limit=cfg.prompts)
    else:
        prompts = task.train_prompts(limit=cfg.prompts)
        sampling = sampling_for(task, n=cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                                temperature=cfg.temperature, top_p=cfg.top_p, draws=cfg.draws)
        samples, backend_info = sample(p.backend, p.backend_options, reference_path(p.model, inputs), p.dtype, out,
                                       prompts, sampling, cfg.data_seed, p.prompt_format)
        info.update(backend_info)
        if source == "pairwise_ranking":
            from tasks import ranking  # BCR's iterative pairwise ranking (tasks' component)

            pairs = ranking.pairs_by_ranking(samples, task.judge)
            rewards = None
        else:
            rewards = task.reward(samples)
            # `pairs` only when set: a plugin task's pairs_from_samples may predate the argument
            pairing = {"pairs": cfg.pairs} if cfg.pairs != "best_worst" else {}
            pairs = task.pairs_from_samples(samples, margin=cfg.min_margin, rewards=rewards, **pairing)
        rows = [sample_to_row(s) for s in samples]
        if rewards is not None:
            for row, reward in zip(rows, rewards):
                row["reward"] = reward
            info["reference_reward_mean"] = sum(rewards) / max(1, len(rewards))
        atomic_write_jsonl(out / "samples.jsonl", rows)
        info["prompts"] = len(prompts)
        info["samples"] = len(samples)
    if not pairs:
        from tasks.errors import TaskError

        raise TaskError(no_pairs_message(task, source, cfg, samples if source != "dataset" else None,
                                         rewards if source == "sample_and_judge" else None))
    atomic_write_jsonl(out / "pairs.jsonl", [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen,
                                       "rejected": p.rejected, "meta": p.meta} for p in pairs])
    info["pairs"] = len(pairs)
    info["task_record"] = task.record()
    return info


def prefdata_source(params: PrefDataParams) -> str:
    """``dataset`` | ``sample_and_judge`` | ``pairwise_ranking``: ``task_default`` as the task decides it."""
    source = params.prefdata.source
    if source != "task_default":
        return source
    import tasks

    try:
        mode = tasks.task_class(params.task.name).preference_mode
    except Exception:
        mode = "generated"
    return "dataset" if mode == "dataset" else "sample_and_judge"


def expected_prompts(node: "Node") -> int | None:
    """How many train prompts (or dataset pairs) a ``prefdata`` node reads, None when ``prefdata.prompts``
    is null and the task does not know its prompt count cheaply."""
    p: PrefDataParams = node.params
    return p.prefdata.prompts if p.prefdata.prompts is not None else p.task.prompt_counts.get("train")


def expected_pairs(node: "Node") -> int | None:
    """At most how many pairs a ``prefdata`` node gives (sampled: one per prompt, K(K-1)/2 with
    ``pairs: all``; a dataset: its pairs), None when the prompt count is unknown."""
    prompts = expected_prompts(node)
    cfg: PrefDataConfig = node.params.prefdata
    if prompts is None or cfg.pairs != "all" or prefdata_source(node.params) != "sample_and_judge":
        return prompts
    return prompts * cfg.samples_per_prompt * (cfg.samples_per_prompt - 1) // 2


def prefdata_work(node: "Node") -> dict[str, int | None]:
    cfg: PrefDataConfig = node.params.prefdata
    if prefdata_source(node.params) == "dataset":
        return {}
    prompts = expected_prompts(node)
    return {"sampled_sequences": None if prompts is None else prompts * cfg.samples_per_prompt}


PREFDATA = register_stage(Stage("prefdata", "2", PrefDataParams, run_prefdata, prefdata_work))
