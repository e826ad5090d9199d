"""Training-step benchmark: our DPO vs TRL's DPOTrainer, and token-level methods vs our DPO.

Every configuration runs in its own subprocess (clean peak-memory reading) on the same model,
the same synthetic pairs and the same batch; step times are medians over the steps after
``warmup`` (the first steps pay one-off costs). Memory is the peak resident set size of the
process (``VmHWM``) minus the resident size after imports, i.e. what training itself added
(model, optimizer, activations); on CUDA it is ``torch.cuda.max_memory_allocated``.

Run it with ``pobench bench train`` (writes ``results/perf/train-<model>-<precision>.json``).
"""
from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = ("the film story actor scene music great bad plot character director long short funny sad "
         "beautiful boring dialogue camera ending moment performance script role series watch love hate "
         "never always really quite simply truly best worst year time people way life world").split()


def synthetic_pairs(n: int, prompt_words: int, response_words: int, seed: int = 0) -> list[dict]:
    """Deterministic pairs of roughly fixed length (prompt and responses of slightly varying size)."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " " + " ".join(rng.choice(WORDS) for _ in range(max(1, words + rng.randint(-3, 3))))

    return [{"prompt": text(prompt_words).strip(), "chosen": text(response_words), "rejected": text(response_words)}
            for _ in range(n)]


def _rss_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; a fallback peak


def _memory(baseline_mb: float) -> dict[str, float]:
    import torch

    if torch.cuda.is_available():
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "kind": "cuda_max_allocated"}
    return {"peak_mb": _rss_mb("VmHWM") - baseline_mb, "peak_rss_mb": _rss_mb("VmHWM"), "kind": "rss_over_baseline"}


# --------------------------------------------------------------------------- workers
def _worker_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import methods
    from bench.train import PreferenceTrainConfig, train_preference

    baseline = _rss_mb("VmRSS")
    pairs = synthetic_pairs(spec["batch_size"] * spec["steps"], spec["prompt_words"], spec["response_words"])
    config = PreferenceTrainConfig(model=spec["model"], steps=spec["steps"], batch_size=spec["batch_size"],
                                   lr=1e-6, max_length=spec["max_length"], max_prompt_length=spec["max_prompt_length"],
                                   precision=spec["precision"], tensorboard=False, progress_bar=False, seed=0,
                                   chat_template=False)  # TRL applies no template to plain-text pairs either
    with tempfile.TemporaryDirectory() as tmp:
        train_preference(config, pairs, methods.get(spec["method"]), Path(tmp) / "run")
        lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    times = [x["step_time_s"] for x in lines[spec["warmup"]:]]
    cpu = [x["step_cpu_s"] for x in lines[spec["warmup"]:]]
    tokens = [x["tokens_per_s"] * x["step_time_s"] for x in lines[spec["warmup"]:]]
    return {"step_times_s": times, "step_cpu_s": cpu, "tokens_per_step": statistics.mean(tokens),
            **_memory(baseline)}


def _worker_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    import trl
    from transformers import TrainerCallback

    from bench.models import load_model

    baseline = _rss_mb("VmRSS")
    pairs = synthetic_pairs(spec["batch_size"] * spec["steps"], spec["prompt_words"], spec["response_words"])
    model, tokenizer = load_model(spec["model"])
    model.train()

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu: list[float] = []
            self.t0 = self.cpu0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.cpu0)

    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        args = trl.DPOConfig(output_dir=tmp, per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                             learning_rate=1e-6, bf16=spec["precision"] == "bf16", use_cpu=not _cuda(),
                             report_to=[], logging_steps=1, save_strategy="no", max_length=spec["max_length"],
                             precompute_ref_log_probs=spec["trl_precompute"], seed=0, dataloader_num_workers=0,
                             disable_tqdm=True)
        trainer = trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                                 processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    return {"step_times_s": timer.times[spec["warmup"]:], "step_cpu_s": timer.cpu[spec["warmup"]:],
            **_memory(baseline)}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run_worker(spec: dict[str, Any], timeout: int) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "bench.perf_train", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("PERF ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {spec['name']} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][5:])


# --------------------------------------------------------------------------- driver
def benchmark_train(model: str = "tiny", batch_size: int = 8, steps: int = 8, warmup: int = 3,
                    prompt_words: int = 24, response_words: int = 40, precision: str = "fp32",
                    token_methods: tuple[str, ...] = ("tdpo2", "sparsepo"), trl: bool = True,
                    timeout: int = 1800, log=print) -> dict[str, Any]:
    """Run every configuration and return the report (see module docstring)."""
    common = {"model": model, "batch_size": batch_size, "steps": steps, "warmup": warmup,
              "prompt_words": prompt_words, "response_words": response_words, "precision": precision,
              "max_length": 256, "max_prompt_length": 128}
    specs = [{"name": "ours_dpo", "kind": "ours", "method": "dpo"}]
    specs += [{"name": f"ours_{m}", "kind": "ours", "method": m} for m in token_methods]
    if trl:
        specs += [{"name": "trl_dpo", "kind": "trl", "trl_precompute": False},
                  {"name": "trl_dpo_precomputed_ref", "kind": "trl", "trl_precompute": True}]
    runs: dict[str, Any] = {}
    for spec in specs:
        spec = {**common, **spec}
        log(f"[bench train] {spec['name']} on {model} ({precision}, {batch_size} pairs x {steps} steps) ...")
        out = _run_worker(spec, timeout)
        out["median_step_s"] = statistics.median(out["step_times_s"])
        out["min_step_s"] = min(out["step_times_s"])
        out["median_step_cpu_s"] = statistics.median(out["step_cpu_s"])
        out["pairs_per_s"] = batch_size / out["median_step_s"]
        out["pairs_per_cpu_s"] = batch_size / out["median_step_cpu_s"]
        runs[spec["name"]] = out
        log(f"    median {out['median_step_s']:.3f} s/step (min {out['min_step_s']:.3f}, "
            f"{out['median_step_cpu_s']:.3f} CPU-s), {out['pairs_per_s']:.2f} pairs/s, peak +{out['peak_mb']:.0f} MB")

    dpo = runs["ours_dpo"]
    ratios: dict[str, float] = {}
    targets: dict[str, dict[str, Any]] = {}
    # wall-clock ratios, and CPU-time ratios (robust when other jobs share the machine's cores)
    if trl:
        for name in ("trl_dpo", "trl_dpo_precomputed_ref"):
            ratios[f"ours_dpo_vs_{name}_pairs_per_s"] = dpo["pairs_per_s"] / runs[name]["pairs_per_s"]
            ratios[f"ours_dpo_vs_{name}_pairs_per_cpu_s"] = dpo["pairs_per_cpu_s"] / runs[name]["pairs_per_cpu_s"]
        for unit in ("pairs_per_s", "pairs_per_cpu_s"):
            best_trl = max(runs["trl_dpo"][unit], runs["trl_dpo_precomputed_ref"][unit])
            ratios[f"ours_dpo_vs_best_trl_{unit}"] = dpo[unit] / best_trl
        value = ratios["ours_dpo_vs_best_trl_pairs_per_s"]
        targets["dpo_vs_trl"] = {"target": ">= 1.3", "value": value, "met": value >= 1.3,
                                 "cpu_time_value": ratios["ours_dpo_vs_best_trl_pairs_per_cpu_s"]}
    for m in token_methods:
        run = runs[f"ours_{m}"]
        ratios[f"{m}_vs_dpo_step_time"] = run["median_step_s"] / dpo["median_step_s"]
        ratios[f"{m}_vs_dpo_step_cpu_time"] = run["median_step_cpu_s"] / dpo["median_step_cpu_s"]
        ratios[f"{m}_vs_dpo_peak_memory"] = run["peak_mb"] / dpo["peak_mb"]
        for what in ("step_time", "peak_memory"):
            value = ratios[f"{m}_vs_dpo_{what}"]
            targets[f"{m}_{what}"] = {"target": "<= 1.25", "value": value, "met": value <= 1.25}
        targets[f"{m}_step_time"]["cpu_time_value"] = ratios[f"{m}_vs_dpo_step_cpu_time"]

    import torch
    import transformers

    try:
        import trl as trl_module
        trl_version = trl_module.__version__
    except ImportError:
        trl_version = None
    return {
        "benchmark": "train_step", "config": common, "runs": runs, "ratios": ratios, "targets": targets,
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _main() -> None:
    spec = json.loads(sys.argv[1])
    worker = _worker_ours if spec["kind"] == "ours" else _worker_trl
    print("PERF " + json.dumps(worker(spec)), flush=True)


if __name__ == "__main__":
    _main()
