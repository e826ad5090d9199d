"""Reasoning benchmarks of a trained checkpoint through lm-evaluation-harness (the SparsePO paper's protocol).

Offline: GSM8K (5-shot, generate-until, strict/flexible exact match) and ARC-Challenge (0-shot
multiple choice, acc/acc_norm) from local files (``<data_dir>/gsm8k/{train,test}.jsonl``,
``<data_dir>/arc_challenge/arc_challenge_test.jsonl``), through the task YAMLs in
``tasks/data/lm_eval/`` (same prompts, filters and metrics as lm-eval's own ``gsm8k`` and
``arc_challenge``; only the dataset location differs). Online: lm-eval's hub-backed ``gsm8k`` and
``arc_challenge``, or the Open LLM Leaderboard v2 group (``leaderboard=True``: IFEval, BBH,
MATH-hard, GPQA, MuSR, MMLU-Pro), as the SparsePO paper reports.

This task evaluates a *model* (``evaluation = "model"``): the harness calls
:meth:`Reasoning.evaluate_model` with a checkpoint directory; generation and scoring are lm-eval's.
Backend: ``hf`` (transformers), or ``vllm`` when it is installed (``backend="auto"`` picks it).
Tags: reasoning, math, multiple-choice, lm-eval.
"""
from __future__ import annotations

import importlib.util
import re
import tempfile
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from tasks.base import (DataSource, Metric, Sampling, Scores, SourceUsed, Task, TaskError, builtin_data_dir,
                        file_fingerprint)

LOCAL_TASKS = ("pobench_gsm8k", "pobench_arc_challenge")
HUB_TASKS = ("gsm8k", "arc_challenge")
LEADERBOARD_V2 = ("leaderboard",)
LOCAL_FILES = ("gsm8k/train.jsonl", "gsm8k/test.jsonl", "arc_challenge/arc_challenge_test.jsonl")
YAML_DIR = "lm_eval"


def metric_key(task: str, metric: str) -> str:
    """lm-eval's ``"exact_match,strict-match"`` of task ``pobench_gsm8k`` -> ``gsm8k_exact_match_strict_match``."""
    task = task.removeprefix("pobench_")
    name, _, filt = metric.partition(",")
    key = f"{task}_{name}" + (f"_{filt}" if filt and filt != "none" else "")
    return re.sub(r"[^A-Za-z0-9_]+", "_", key)


class Reasoning(Task):
    name = "reasoning"
    version = "1"
    description = "GSM8K and ARC-Challenge (or the Open LLM Leaderboard v2) of a checkpoint, via lm-eval"
    paper = "SparsePO (Christopoulou et al. 2024) reasoning evaluation; lm-evaluation-harness"
    sources = (
        DataSource("hub", "lm-eval: gsm8k (openai/gsm8k), arc_challenge (allenai/ai2_arc); leaderboard v2 group",
                   "lm-eval's own task YAMLs", "test"),
        DataSource("local", "gsm8k/test.jsonl", "original files: <data_dir>/gsm8k/{train,test}.jsonl and "
                   "<data_dir>/arc_challenge/arc_challenge_test.jsonl, via tasks/data/lm_eval/*.yaml", "test"),
    )
    metrics = (
        Metric("gsm8k_exact_match_strict_match", True, "GSM8K accuracy, answer after '####' (5-shot)"),
        Metric("gsm8k_exact_match_flexible_extract", True, "GSM8K accuracy, last number in the output (5-shot)"),
        Metric("arc_challenge_acc", True, "ARC-Challenge accuracy (0-shot log-likelihood)"),
        Metric("arc_challenge_acc_norm", True, "ARC-Challenge length-normalised accuracy"),
    )
    sampling = Sampling(max_new_tokens=256, temperature=0.0, top_p=1.0, n=1)
    preference_mode = "none"
    evaluation = "model"
    options = {
        "leaderboard": (False, "online: run the Open LLM Leaderboard v2 group instead of gsm8k + arc_challenge"),
        "lm_eval_tasks": (None, "explicit lm-eval task names (overrides the defaults above)"),
        "num_fewshot": (None, "override every task's few-shot count (None = each task's own)"),
        "backend": ("auto", "hf | vllm | auto (vllm when importable)"),
        "batch_size": (1, "lm-eval batch size"),
        "apply_chat_template": (False, "format prompts with the model's chat template (the Open LLM Leaderboard "
                                "v2 does, for chat models); few-shot examples then go in as turns"),
    }

    def local_root(self) -> Path | None:
        root = super().local_root()
        if root is not None and not all((root / f).exists() for f in LOCAL_FILES):
            missing = [f for f in LOCAL_FILES if not (root / f).exists()]
            raise TaskError(f"reasoning: {root} lacks {missing}; the local suite needs GSM8K train/test and "
                            "the ARC-Challenge test jsonl")
        return root

    def source_files(self, kind: str) -> tuple[Path, list[Path]]:
        """The local suite reads GSM8K and ARC-Challenge files (its declared location names only GSM8K's test file)."""
        if kind == "local" and self.local_root() is not None:
            root = self.local_root()
            return root, [root / f for f in LOCAL_FILES]
        return super().source_files(kind)

    def task_names(self) -> list[str]:
        if self.lm_eval_tasks:
            return list(self.lm_eval_tasks)
        if self.resolve_source() == "local":
            return list(LOCAL_TASKS)
        return list(LEADERBOARD_V2 if self.leaderboard else HUB_TASKS)

    def write_task_yamls(self, out_dir: Path) -> Path:
        """Instantiate the shipped YAML templates with the absolute data folder into ``out_dir``."""
        root = self.local_root()
        if root is None:
            raise TaskError("reasoning: local task YAMLs need the data folder (--data-dir)")
        out_dir.mkdir(parents=True, exist_ok=True)
        for template in sorted((builtin_data_dir() / YAML_DIR).glob("*.yaml")):
            text = template.read_text(encoding="utf-8").replace("{data_dir}", str(root.resolve()))
            (out_dir / template.name).write_text(text, encoding="utf-8")
        self._note_source(SourceUsed("local", str(root.resolve()), ", ".join(LOCAL_FILES),
                                     file_fingerprint(root / f for f in LOCAL_FILES)))
        return out_dir

    def _backend(self) -> str:
        if self.backend == "auto":
            return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
        if self.backend not in ("hf", "vllm"):
            raise TaskError(f"reasoning: backend must be hf, vllm or auto, got {self.backend!r}")
        return self.backend

    def evaluate_model(self, model: str, limit: int | float | None = None, model_args: dict[str, Any] | None = None,
                       device: str = "cpu", gen_kwargs: dict[str, Any] | None = None,
                       log_samples: bool = True, **kwargs: Any) -> Scores:
        """Run lm-eval on checkpoint ``model`` (a directory or hub id). ``limit``: items per task
        (for smoke tests; lm-eval marks limited results as not comparable)."""
        if importlib.util.find_spec("lm_eval") is None:
            raise TaskError("the reasoning task needs lm-eval: pip install 'lm-eval>=0.4.5'")
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        backend = self._backend()
        args: dict[str, Any] = {"pretrained": str(model), **(model_args or {})}
        adapter_config = Path(str(model)) / "adapter_config.json"
        if adapter_config.is_file() and "peft" not in args:
            # a LoRA checkpoint: lm-eval's hf model loads the base and applies the adapter
            import json
            base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
            if not base:
                raise TaskError(f"reasoning: {adapter_config} names no base_model_name_or_path")
            if backend != "hf":
                raise TaskError(f"reasoning: {model} is a PEFT adapter; merge it first for the {backend} backend "
                                "or use backend=hf")
            args.update(pretrained=base, peft=str(model))
        if backend == "hf":
            args.setdefault("device", device)
            args.setdefault("dtype", "float32" if device == "cpu" else "auto")
        names = self.task_names()
        with tempfile.TemporaryDirectory(prefix="pobench-lm-eval-") as tmp:
            if self.resolve_source() == "local":
                # indexing lm-eval's ~10k built-in YAMLs takes seconds: skip it when only ours are asked for
                manager = TaskManager(include_path=str(self.write_task_yamls(Path(tmp))),
                                      include_defaults=not set(names) <= set(LOCAL_TASKS))
            else:
                manager = TaskManager()
                self._note_source(SourceUsed("hub", "lm-eval task registry", ", ".join(names),
                                             f"lm_eval-{package_version('lm_eval')}"))
            results = simple_evaluate(model=backend, model_args=args, tasks=names, task_manager=manager,
                                      num_fewshot=self.num_fewshot, batch_size=self.batch_size, limit=limit,
                                      gen_kwargs=gen_kwargs, log_samples=log_samples,
                                      apply_chat_template=self.apply_chat_template,
                                      fewshot_as_multiturn=self.apply_chat_template, **kwargs)
        if results is None:  # non-zero ranks under multi-process lm-eval
            return Scores(metrics={}, per_sample=[], details={"rank": "non-zero: results on rank 0"})
        metrics: dict[str, float] = {}
        directions: dict[str, bool] = {}  # lm-eval's own: the class's `metrics` cannot list the leaderboard group's
        for task, values in results["results"].items():
            for metric, value in values.items():
                if (isinstance(value, (int, float)) and not isinstance(value, bool) and "_stderr" not in metric
                        and metric != "sample_len"):
                    metrics[metric_key(task, metric)] = float(value)
                    higher = (results.get("higher_is_better") or {}).get(task, {}).get(metric.partition(",")[0])
                    if isinstance(higher, bool):
                        directions[metric_key(task, metric)] = higher
        per_sample = []
        for task, rows in (results.get("samples") or {}).items():
            for row in rows:
                entry: dict[str, Any] = {"task": task.removeprefix("pobench_"), "doc_id": row.get("doc_id")}
                for metric in row.get("metrics", []):
                    if isinstance(row.get(metric), (int, float)):
                        entry[metric] = float(row[metric])
                entry["filter"] = row.get("filter")
                per_sample.append(entry)
        details = {"lm_eval_version": package_version("lm_eval"), "backend": backend, "tasks": names,
                   "chat_template": self.apply_chat_template, "model_args": args,
                   "task_versions": results.get("versions", {}), "n_shot": results.get("n-shot", {}),
                   "limit": limit, "n_samples": {k: v.get("effective", v.get("original"))
                                                 for k, v in results.get("n-samples", {}).items()},
                   "stderr": {metric_key(t, m.replace("_stderr", "")): v for t, vals in results["results"].items()
                              for m, v in vals.items() if "_stderr" in m and isinstance(v, (int, float))},
                   "higher_is_better": directions}
        return Scores(metrics=metrics, per_sample=per_sample, details=details)
