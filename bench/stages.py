"""Stage functions: what each node of the plan computes, written into its (partial) directory.

Every function has the signature ``fn(ctx, node, inputs, out_dir) -> dict`` where ``inputs`` maps
the node's dependency names to finished :class:`bench.store.StageOutput` s and the returned dict
goes into the node's ``record.json``. Functions only write inside ``out_dir``; the store makes the
result appear atomically, so a ``kill -9`` at any point leaves either a finished output or a
partial directory that the next run resumes or redoes.

Files each stage leaves:

=========  ===============================================================================
sft        ``model/`` (safetensors + tokenizer): the SFT reference
prefdata   ``pairs.jsonl`` (prompt, chosen, rejected, meta), ``samples.jsonl`` when sampled
prep       ``weights.jsonl``: TIS-DPO token weights per pair
train      ``model/``: the trained policy (or a PEFT adapter over the reference)
generate   ``samples.jsonl``: one Sample per line (prompt_id, index, prompt, completion)
score      ``scores.json``: task metrics, per-sample values, KL per sample, task record
evaluate   ``results.json``: a model-evaluation task's metrics, their standard errors, per-item
           records and details (e.g. lm-eval's) on the policy or the reference
=========  ===============================================================================
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from bench.config import SuiteConfig
from bench.plan import Node
from bench.store import StageOutput, atomic_write_json, atomic_write_text

log = logging.getLogger("pobench")


@dataclass
class StageContext:
    suite: SuiteConfig
    work_dir: Path

    def trainer_dir(self, node: Node) -> Path:
        """A stable directory for the trainer's own resumable run (checkpoints survive kill -9).

        It is not inside the stage's partial directory because the trainer records absolute paths
        (``result.json``) that must stay valid after the stage output is renamed into place.
        """
        return self.work_dir / "trainer" / f"{node.stage}-{node.key}"

    def task(self, payload: dict[str, Any]):
        import tasks

        return tasks.get(payload["name"], **payload.get("options", {}))


# ----------------------------------------------------------------------------------------------
# helpers

def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def base_model_path(model_payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from bench.models import resolve_model

    resolved = resolve_model(model_payload["id"])
    return resolved.path, {"model_id": resolved.model_id, "model_source": resolved.source,
                           "model_path": resolved.path, **({"model_details": resolved.details}
                                                           if resolved.details else {})}


def reference_path(node: Node, inputs: dict[str, StageOutput]) -> str:
    """The reference policy: the SFT output when the suite has SFT, else the base model."""
    if "reference" in inputs:
        return inputs["reference"].record["model_path"]
    return base_model_path(node.params["model"])[0]


def policy_path(node: Node, inputs: dict[str, StageOutput]) -> str:
    if "policy" in inputs:
        return inputs["policy"].record["model_path"]
    return reference_path(node, inputs)


def preference_config(model_path: str, train: dict[str, Any], seed: int):
    """The trainer's config from a train node's settings (one helper, so equal settings fingerprint equal)."""
    from bench.train import PreferenceTrainConfig

    return PreferenceTrainConfig.from_dict({**train, "model": model_path, "seed": seed, "progress_bar": False})


def pair_dicts(pairs: Sequence[Any]) -> list[dict[str, str]]:
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]


def train_record(result: Any) -> dict[str, Any]:
    return {"model_path": str(result.model_path), "trainer_dir": str(result.output_dir), "steps": result.steps,
            "final_loss": result.final_loss, "train_metrics": result.metrics, "data_report": result.data,
            "train_runtime_s": result.runtime_s, "resumed_from_step": result.resumed_from_step,
            "trainer_fingerprint": result.fingerprint}


def sampling_for(task: Any, *, n: int, max_new_tokens: int, temperature: float, top_p: float):
    return task.sampling.replace(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)


def make_backend(ctx: StageContext, name: str, model_path: str, dtype: str, out_dir: Path):
    """A backend for ``model_path``. vLLM and servers need full weights: merge a PEFT adapter first."""
    from bench.backends import get_backend, resolve_backend_name

    resolved = resolve_backend_name(name)
    if resolved != "hf" and (Path(model_path) / "adapter_config.json").is_file():
        model_path = merge_adapter(model_path, out_dir / "merged")
    gen = ctx.suite.generation
    return get_backend(resolved, model_path, dtype=dtype, batch_size=gen.batch_size, base_url=gen.base_url,
                       serve_python=gen.serve_python, api_key=gen.api_key)


def merge_adapter(adapter_dir: str, target: Path) -> str:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    if not (target / "config.json").is_file():
        model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, dtype=torch.float32).merge_and_unload()
        model.save_pretrained(target)
        AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(target)
    return str(target)


def sample_to_row(sample: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(sample).items() if v is not None and v != {}}


def rows_to_samples(rows: Sequence[dict[str, Any]]) -> list[Any]:
    from tasks.base import Sample

    return [Sample(**row) for row in rows]


# ----------------------------------------------------------------------------------------------
# stages

def stage_sft(ctx: StageContext, node: Node, inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    from bench.train import SFTConfig, train_sft

    task = ctx.task(node.params["task"])
    sft = node.params["sft"]
    examples = task.sft_data(limit=sft.get("max_examples"))
    base, model_info = base_model_path(node.params["model"])
    config = SFTConfig.from_dict({
        "model": base, "steps": sft["steps"], "epochs": sft["epochs"], "batch_size": sft["batch_size"],
        "lr": sft["lr"], "chat_template": node.params.get("chat_template"), "progress_bar": False,
        "lora": None if sft["peft"] == "full" else {"r": 16, "alpha": 32}})
    result = train_sft(config, [{"prompt": e.prompt, "completion": e.completion} for e in examples],
                       ctx.trainer_dir(node))
    return {"examples": len(examples), "task_record": task.record(), **model_info, **train_record(result)}


def stage_prefdata(ctx: StageContext, node: Node, inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    task = ctx.task(node.params["task"])
    cfg = node.params["prefdata"]
    source = cfg["source"]
    if source == "task_default":
        source = "dataset" if task.preference_mode == "dataset" else "sample_and_judge"
    info: dict[str, Any] = {"source": source}
    if source == "dataset":
        pairs = task.preference_data(limit=cfg["prompts"])
    else:
        prompts = task.train_prompts(limit=cfg["prompts"])
        model = reference_path(node, inputs)
        backend = make_backend(ctx, node.params["backend"], model, node.params["dtype"], out)
        try:
            sampling = sampling_for(task, n=cfg["samples_per_prompt"], max_new_tokens=cfg["max_new_tokens"],
                                    temperature=cfg["temperature"], top_p=cfg["top_p"])
            samples = backend.generate(prompts, sampling, seed=cfg["data_seed"])
            info["backend"] = backend.name
            info["generation_stats"] = dict(backend.stats)
        finally:
            backend.close()
        if source == "pairwise_ranking":
            from tasks import ranking  # BCR's iterative pairwise ranking (tasks' component)

            pairs = ranking.pairs_by_ranking(samples, task.judge)
            rewards = None
        else:
            rewards = task.reward(samples)
            pairs = task.pairs_from_samples(samples, margin=cfg["min_margin"], rewards=rewards)
        rows = [sample_to_row(s) for s in samples]
        if rewards is not None:
            for row, reward in zip(rows, rewards):
                row["reward"] = reward
            info["reference_reward_mean"] = sum(rewards) / max(1, len(rewards))
        write_jsonl(out / "samples.jsonl", rows)
        info["prompts"] = len(prompts)
        info["samples"] = len(samples)
    if not pairs:
        raise RuntimeError(f"prefdata for task {task.name!r}: no preference pair survived (source={source}, "
                           f"min_margin={cfg['min_margin']}); lower prefdata.min_margin or add prompts")
    write_jsonl(out / "pairs.jsonl", [{"id": p.id, "prompt": p.prompt, "chosen": p.chosen,
                                       "rejected": p.rejected, "meta": p.meta} for p in pairs])
    info["pairs"] = len(pairs)
    info["task_record"] = task.record()
    return info


def load_pairs(prefdata: StageOutput, swap: bool = False) -> list[Any]:
    from tasks.base import PreferencePair

    pairs = []
    for row in read_jsonl(prefdata.path / "pairs.jsonl"):
        chosen, rejected = (row["rejected"], row["chosen"]) if swap else (row["chosen"], row["rejected"])
        pairs.append(PreferencePair(prompt=row["prompt"], chosen=chosen, rejected=rejected, id=row.get("id", ""),
                                    meta=row.get("meta", {})))
    return pairs


def stage_prep(ctx: StageContext, node: Node, inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    """TIS-DPO token weights (bench.train.estimate_tis_weights), reusing the suite's DPO as pi_plus."""
    from bench.train import TISWeightConfig, estimate_tis_weights

    p = node.params
    pairs = pair_dicts(load_pairs(inputs["prefdata"]))
    config = TISWeightConfig(train=preference_config(reference_path(node, inputs), p["train"], p["seed"]),
                             estimator=p["tis"]["estimator"], beta=p["beta"], transform=p["tis"]["transform"],
                             transform_options=dict(p["tis"]["transform_options"]))
    trainer_dir = ctx.trainer_dir(node)
    reused = False
    if "positive" in inputs:
        # the estimator trains pi_plus in <dir>/pi_plus unless a finished run with the same
        # fingerprint (same config, beta and pairs) is there: point it at the suite's DPO run
        link = trainer_dir / "pi_plus"
        trainer_dir.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(inputs["positive"].record["trainer_dir"], target_is_directory=True)
        reused = True
    try:
        weighted = estimate_tis_weights(config, pairs, trainer_dir)
    except FileExistsError:
        # the suite's DPO run differs from what the estimator would train: train pi_plus itself
        (trainer_dir / "pi_plus").unlink()
        reused = False
        weighted = estimate_tis_weights(config, pairs, trainer_dir)
    write_jsonl(out / "weighted_pairs.jsonl", weighted)
    return {"pairs": len(weighted), "estimator": config.estimator, "transform": config.transform,
            "reused_suite_dpo_as_pi_plus": reused}


def stage_train(ctx: StageContext, node: Node, inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    import methods
    from bench.train import train_preference

    p = node.params
    if "prep" in inputs:
        pairs = read_jsonl(inputs["prep"].path / "weighted_pairs.jsonl")
    else:
        pairs = pair_dicts(load_pairs(inputs["prefdata"]))
    method = methods.get(p["method"], **p["hparams"])
    config = preference_config(reference_path(node, inputs), p["train"], p["seed"])
    result = train_preference(config, pairs, method, ctx.trainer_dir(node))
    return {"method": p["method"], "hparams": method.hparams(), **train_record(result)}


def stage_generate(ctx: StageContext, node: Node, inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    task = ctx.task(node.params["task"])
    g = node.params["generation"]
    prompts = task.eval_prompts(limit=g["prompts"])
    backend = make_backend(ctx, g["backend"], policy_path(node, inputs), g["dtype"], out)
    try:
        sampling = sampling_for(task, n=g["samples_per_prompt"], max_new_tokens=g["max_new_tokens"],
                                temperature=g["temperature"], top_p=g["top_p"])
        samples = backend.generate(prompts, sampling, seed=node.params["seed"])
        stats = dict(backend.stats)
        name = backend.name
    finally:
        backend.close()
    shutil.rmtree(out / "merged", ignore_errors=True)  # merged weights were only for the server
    write_jsonl(out / "samples.jsonl", [sample_to_row(s) for s in samples])
    return {"backend": name, "samples": len(samples), "prompts": len(prompts), "generation_stats": stats,
            "sampling": sampling.as_dict(), "task_record": task.record()}


def stage_score(ctx: StageContext, node: Node, inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    from bench import teacher_forcing

    task = ctx.task(node.params["task"])
    samples = rows_to_samples(read_jsonl(inputs["samples"].path / "samples.jsonl"))
    cfg = node.params["score"]
    policy, reference = policy_path(node, inputs), reference_path(node, inputs)
    is_reference = "policy" not in inputs
    pair_logps = None
    if cfg["kl"]:
        if is_reference:
            for s in samples:  # the reference against itself: exactly zero, no forward needed
                s.kl = 0.0
        else:
            kls = teacher_forcing.sequence_kl(policy, reference, [s.prompt for s in samples],
                                              [s.completion for s in samples], batch_size=cfg["kl_batch_size"],
                                              dtype=cfg.get("kl_dtype", "float32"))
            for s, kl in zip(samples, kls):
                s.kl = kl
    eval_pairs = task.eval_pairs()
    if eval_pairs:
        pair_logps = teacher_forcing.pair_logps(policy, reference, eval_pairs, batch_size=cfg["kl_batch_size"],
                                                dtype=cfg.get("kl_dtype", "float32"))
    scores = task.score(samples, pair_logps=pair_logps)
    metrics = dict(scores.metrics)
    per_sample = scores.per_sample
    for row, sample in zip(per_sample, samples):
        if sample.kl is not None:
            row.setdefault("kl", sample.kl)
    if cfg["kl"] and "kl" not in metrics and samples:
        metrics["kl"] = sum(s.kl for s in samples) / len(samples)
    task_record = task.record()
    if not task_record.get("data_source"):  # scoring reads no data: the generate stage knows the source
        task_record["data_source"] = inputs["samples"].record.get("task_record", {}).get("data_source")
    directions = {m.name: m.higher_is_better for m in task.metrics}
    directions.setdefault("kl", False)
    atomic_write_json(out / "scores.json", {"metrics": metrics, "per_sample": per_sample, "details": scores.details,
                                            "directions": directions, "task_record": task_record})
    return {"metrics": metrics, "kl_budget_exceeded": bool(metrics.get("kl", 0.0) > cfg["kl_budget"])}


def evaluation_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def stage_evaluate(ctx: StageContext, node: Node, inputs: dict[str, StageOutput], out: Path) -> dict[str, Any]:
    """A model-evaluation task (``evaluation == "model"``, e.g. lm-eval reasoning) on the policy or reference.

    A PEFT adapter goes to the task as is when the task evaluates with transformers (its ``backend``
    option resolves to ``hf``; lm-eval's hf model applies the adapter), else it is merged first
    (vLLM and servers need full weights), like the generate stage does.
    """
    from bench.backends import vllm_available

    task = ctx.task(node.params["task"])
    cfg = node.params["eval"]
    checkpoint = model = policy_path(node, inputs)
    given_as = "full weights"
    if (Path(checkpoint) / "adapter_config.json").is_file():
        backend = getattr(task, "backend", None)  # the task's own option (reasoning: hf | vllm | auto)
        if backend == "hf" or (backend == "auto" and not vllm_available()):
            given_as = "PEFT adapter"
        else:
            model, given_as = merge_adapter(checkpoint, out / "merged"), "merged PEFT adapter"
    kwargs: dict[str, Any] = {"limit": cfg["limit"], "device": evaluation_device(ctx.suite.eval.device)}
    if cfg.get("gen_kwargs"):
        kwargs["gen_kwargs"] = dict(cfg["gen_kwargs"])
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
            "given_as": given_as, "limit": cfg["limit"], "device": kwargs["device"]}


STAGE_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "sft": stage_sft, "prefdata": stage_prefdata, "prep": stage_prep, "train": stage_train,
    "generate": stage_generate, "score": stage_score, "evaluate": stage_evaluate,
}


def execute_node(ctx: StageContext, store: Any, node: Node) -> tuple[StageOutput, bool]:
    """Run one node through the store (skipped when its output exists). Dependencies must be done."""
    inputs = {}
    for name, dep in node.deps.items():
        done = store.get(dep.stage, dep.key)
        if done is None:
            raise RuntimeError(f"{node.stage} {node.label}: input {name} ({dep.stage}/{dep.key}) is not finished")
        inputs[name] = done
    fn = STAGE_FUNCTIONS[node.stage]
    return store.run(node.stage, node.key, lambda out: fn(ctx, node, inputs, out),
                     inputs={"label": node.label, "params": node.params,
                             "deps": {k: f"{d.stage}/{d.key}" for k, d in node.deps.items()}})


def ensure_threads() -> None:
    """Respect OMP_NUM_THREADS for torch when the user set it (shared machines)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))
