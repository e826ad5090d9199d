"""Training-step benchmark: our DPO vs TRL's DPOTrainer, and token-level methods vs our DPO.

Every configuration runs in its own subprocess (clean peak-memory reading) on the same model,
the same synthetic pairs and the same batch; step times are medians over the steps after
``warmup`` (the first steps pay one-off costs). Memory is the peak resident set size of the
process (``VmHWM``) minus the resident size after imports, i.e. what training itself added
(model, optimizer, activations); on CUDA it is ``torch.cuda.max_memory_allocated``.

``lora=True`` races on the suites' recipe (``configs/default.yaml``'s ``train:``): a LoRA adapter
(:data:`LORA`) on both sides, the reference being the base with adapters disabled. ``rounds=N``
runs the whole list of configurations N times, forward in even rounds and reversed in odd ones,
so that drifting machine load hits every configuration alike; a configuration's figures are the
medians over all rounds' timed steps. The driver also measures the machine's matmul peak
(:func:`matmul_peak_gflops`) and reports each configuration's estimated achieved FLOP/s
(:func:`flops_per_token`) and its fraction of that peak.

Run it with ``pobench bench train`` (writes ``results/perf/train-<model>-<precision>[-lora].json``).
"""
from __future__ import annotations

import contextlib
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


#: the suites' LoRA recipe (configs/default.yaml, ``train: {peft: lora, lora: {r, alpha, target_modules}}``;
#: dropout is LoraSettings' default 0)
LORA: dict[str, Any] = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
#: targets: our DPO pairs/s over the best TRL variant (at least), token-level step time and peak memory over our
#: DPO (at most)
DPO_VS_TRL_TARGET = 1.5
TOKEN_LEVEL_TARGET = 1.15

FLOPS_FORMULA = ("per token: policy forward 2*P + backward through the activations 2*P + weight gradients "
                 "2*P_trainable (+ reference forward 2*P when the reference runs at every step); "
                 "achieved FLOP/s = tokens per step * FLOPs per token / median step time")


def flops_per_token(params: int, trainable: int, reference_each_step: bool) -> int:
    """Estimated FLOPs of one training step per (non-padding) token.

    A matmul with a weight of n parameters costs 2*n FLOPs per token, so with P the policy's parameter
    count (base + adapters) and P_trainable those the optimizer updates:

        policy forward 2*P + activation gradients 2*P + weight gradients 2*P_trainable
        (+ reference forward 2*P when the reference runs at every step)

    i.e. the familiar 6*P for full fine-tuning and about 4*P with LoRA (P_trainable is the adapters only).
    The reference runs at every step for TRL without ``precompute_ref_log_probs`` and for our token-level
    methods' ``online`` variants; our DPO, our token-level methods (cached reference summary) and TRL's
    precomputed variant read a reference pass that precedes the timed steps. An estimate: P includes the embedding table (a lookup, though a tied output layer is
    a real matmul), while attention scores (~4*T*d per layer and token, small for these short sequences),
    element-wise and token math, and the output-layer positions our trainer skips are not modelled.
    """
    return 2 * params + 2 * params + 2 * trainable + (2 * params if reference_each_step else 0)


def matmul_peak_gflops(precision: str = "fp32", n: int = 1024, repeats: int = 5, warmup: int = 2) -> float:
    """The machine's matmul rate: best of ``repeats`` timed ``n x n @ n x n`` products, 2*n^3 FLOPs each."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    inner = 10 if device == "cuda" else 1  # one product takes tens of microseconds on a GPU: time several

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        for _ in range(warmup):
            torch.matmul(a, b)
        sync()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.matmul(a, b)
            sync()
            best = min(best, (time.perf_counter() - t0) / inner)
    return 2 * n ** 3 / best / 1e9


def report_path(out_dir: str | Path, model: str, precision: str, lora: bool) -> Path:
    """``<out_dir>/train-<model>-<precision>[-lora].json`` (the model's last path part, made file-safe)."""
    safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(model).name)
    return Path(out_dir) / f"train-{safe_model}-{precision}{'-lora' if lora else ''}.json"


# --------------------------------------------------------------------------- workers
@contextlib.contextmanager
def _own_reference_cache(directory: str):
    """Every worker computes its reference pass itself (timed, before its steps) instead of reading one an
    earlier worker or run left in the user's cache, so that rounds are alike; models stay cached."""
    from bench.train import preference

    shared = preference.cache_dir
    preference.cache_dir = lambda: Path(directory)
    try:
        yield
    finally:
        preference.cache_dir = shared


def _worker_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import methods
    from bench.train import PreferenceTrainConfig, train_preference

    baseline = _rss_mb("VmRSS")
    pairs = synthetic_pairs(spec["batch_size"] * spec["steps"], spec["prompt_words"], spec["response_words"])
    recipe = {"peft": "lora", "lora": dict(LORA)} if spec["lora"] else {"peft": "full"}
    config = PreferenceTrainConfig(model=spec["model"], steps=spec["steps"], batch_size=spec["batch_size"],
                                   lr=1e-6, max_length=spec["max_length"], max_prompt_length=spec["max_prompt_length"],
                                   precision=spec["precision"], tensorboard=False, progress_bar=False, seed=0,
                                   chat_template=False,  # TRL applies no template to plain-text pairs either
                                   token_reference=spec.get("token_reference", "cached"), **recipe)
    method = methods.get(spec["method"])

    with tempfile.TemporaryDirectory() as tmp, _own_reference_cache(tmp):
        result = train_preference(config, pairs, method, Path(tmp) / "run")
        lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    counts, plan = result.extra["parameters"], result.extra["reference"]
    times = [x["step_time_s"] for x in lines[spec["warmup"]:]]
    cpu = [x["step_cpu_s"] for x in lines[spec["warmup"]:]]
    tokens = [x["tokens_per_s"] * x["step_time_s"] for x in lines[spec["warmup"]:]]
    return {"step_times_s": times, "step_cpu_s": cpu, "tokens_per_step": statistics.mean(tokens),
            **counts, "reference_plan": plan, "reference_each_step": plan == "online",
            "reference_pass_s": result.extra.get("reference_pass_s"),
            "lora": config.lora.model_dump(mode="json") if config.lora is not None else None,
            **_memory(baseline)}


def _worker_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    import torch
    import trl
    from transformers import TrainerCallback

    from bench.models import load_model
    from bench.train.preference import parameter_counts

    baseline = _rss_mb("VmRSS")
    pairs = synthetic_pairs(spec["batch_size"] * spec["steps"], spec["prompt_words"], spec["response_words"])
    # as our load_policy: with LoRA + bf16 the frozen base is held in bf16 (peft keeps the adapters in fp32)
    dtype = torch.bfloat16 if spec["lora"] and spec["precision"] == "bf16" else torch.float32
    model, tokenizer = load_model(spec["model"], dtype=dtype)
    model.train()
    peft_config = None
    if spec["lora"]:
        import peft

        peft_config = peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                      target_modules=list(LORA["target_modules"]), task_type="CAUSAL_LM")

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
        # gradient_checkpointing: DPOConfig turns it on by default (TRL >= 1.0); ours never checkpoints
        args = trl.DPOConfig(output_dir=tmp, per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"],
                             learning_rate=1e-6, bf16=spec["precision"] == "bf16", use_cpu=not _cuda(),
                             report_to=[], logging_steps=1, save_strategy="no", max_length=spec["max_length"],
                             precompute_ref_log_probs=spec["trl_precompute"], seed=0, dataloader_num_workers=0,
                             disable_tqdm=True, gradient_checkpointing=False)
        # with peft_config TRL wraps the model and uses it with adapters disabled as the reference
        trainer = trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                                 processing_class=tokenizer, callbacks=[timer], peft_config=peft_config)
        trained = trainer.model
        counts = parameter_counts(trained)
        lora = None
        if spec["lora"]:
            used = trained.peft_config["default"]
            lora = {"r": used.r, "alpha": used.lora_alpha, "dropout": used.lora_dropout,
                    "target_modules": sorted(used.target_modules)}
        trainer.train()
        history = trainer.state.log_history
    # tokens per step: TRL logs the running count of attention-mask tokens (our count: non-padding tokens too)
    cumulative = [x["num_tokens"] for x in history if "num_tokens" in x]
    if len(cumulative) == spec["steps"]:
        per_step = [b - a for a, b in zip([0] + cumulative, cumulative)][spec["warmup"]:]
        tokens, source = statistics.mean(per_step), "trl_num_tokens"
    else:  # an older TRL: the synthetic pairs' token counts (prompt twice, both responses, their EOS)
        per_pair = [2 * len(tokenizer(p["prompt"])["input_ids"]) + len(tokenizer(p["chosen"])["input_ids"])
                    + len(tokenizer(p["rejected"])["input_ids"]) + 2 for p in pairs]
        tokens, source = spec["batch_size"] * statistics.mean(per_pair), "synthetic_pairs"
    return {"step_times_s": timer.times[spec["warmup"]:], "step_cpu_s": timer.cpu[spec["warmup"]:],
            "tokens_per_step": tokens, "tokens_source": source, **counts,
            "reference_each_step": not spec["trl_precompute"], "lora": lora, **_memory(baseline)}


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
def _combine(outs: list[dict[str, Any]], batch_size: int, peak_gflops: float) -> dict[str, Any]:
    """One configuration's figures from its rounds: medians over all rounds' timed steps."""
    first = outs[0]
    run: dict[str, Any] = {
        "step_times_s": [t for o in outs for t in o["step_times_s"]],
        "step_cpu_s": [t for o in outs for t in o["step_cpu_s"]],
        "rounds": [{k: o[k] for k in ("round", "position", "median_step_s", "median_step_cpu_s", "step_times_s",
                                      "step_cpu_s", "peak_mb", "tokens_per_step")} for o in outs],
        "round_median_step_s": [o["median_step_s"] for o in outs],
        "peak_mb": statistics.median(o["peak_mb"] for o in outs),
        "kind": first["kind"],
        "tokens_per_step": statistics.mean(o["tokens_per_step"] for o in outs),
    }
    for key in ("params", "params_trainable", "params_trainable_non_adapter", "reference_each_step",
                "reference_plan", "lora", "tokens_source"):
        if key in first:
            run[key] = first[key]
    if "peak_rss_mb" in first:
        run["peak_rss_mb"] = statistics.median(o["peak_rss_mb"] for o in outs)
    if first.get("reference_pass_s") is not None:  # the cached reference pass, once before the steps
        run["reference_pass_s"] = statistics.median(o["reference_pass_s"] for o in outs)
    run["median_step_s"] = statistics.median(run["step_times_s"])
    run["min_step_s"] = min(run["step_times_s"])
    run["median_step_cpu_s"] = statistics.median(run["step_cpu_s"])
    run["pairs_per_s"] = batch_size / run["median_step_s"]
    run["pairs_per_cpu_s"] = batch_size / run["median_step_cpu_s"]
    # FLOP/s estimate: see flops_per_token (6*P per token for full fine-tuning, ~4*P with LoRA, +2*P reference)
    run["flops_per_token"] = flops_per_token(run["params"], run["params_trainable"], run["reference_each_step"])
    run["achieved_gflops"] = run["tokens_per_step"] * run["flops_per_token"] / run["median_step_s"] / 1e9
    run["fraction_of_peak"] = run["achieved_gflops"] / peak_gflops
    return run


def benchmark_train(model: str = "tiny", batch_size: int = 8, steps: int = 8, warmup: int = 3,
                    prompt_words: int = 24, response_words: int = 40, precision: str = "fp32",
                    token_methods: tuple[str, ...] = ("tdpo2", "sparsepo"), trl: bool = True,
                    lora: bool = False, rounds: int = 1, out_dir: str | Path | None = None,
                    online_variants: bool = True,
                    timeout: int = 1800, log=print) -> dict[str, Any]:
    """Run every configuration ``rounds`` times and return the report (see module docstring).

    With ``out_dir`` the report is also written to :func:`report_path` there (its path is in ``output``).
    """
    if rounds < 1:
        raise ValueError(f"rounds: {rounds} must be >= 1")
    if steps <= warmup:
        raise ValueError(f"steps: {steps} must exceed warmup ({warmup}): no step would be timed")
    common = {"model": model, "batch_size": batch_size, "steps": steps, "warmup": warmup,
              "prompt_words": prompt_words, "response_words": response_words, "precision": precision,
              "max_length": 256, "max_prompt_length": 128, "lora": lora}
    specs = [{"name": "ours_dpo", "kind": "ours", "method": "dpo"}]
    specs += [{"name": f"ours_{m}", "kind": "ours", "method": m} for m in token_methods]
    # the same methods with the reference at every step (token_reference: online), side by side
    specs += [{"name": f"ours_{m}_online", "kind": "ours", "method": m, "token_reference": "online"}
              for m in token_methods if online_variants]
    if trl:
        specs += [{"name": "trl_dpo", "kind": "trl", "trl_precompute": False},
                  {"name": "trl_dpo_precomputed_ref", "kind": "trl", "trl_precompute": True}]
    recipe = "LoRA r=16" if lora else "full fine-tuning"

    precisions = ("fp32", "bf16") if precision == "bf16" else ("fp32",)
    peak_before = {p: matmul_peak_gflops(p) for p in precisions}
    log("[bench train] matmul peak " + ", ".join(f"{p} {v:.1f} GFLOP/s" for p, v in peak_before.items()))

    order: list[list[str]] = []
    outs: dict[str, list[dict[str, Any]]] = {spec["name"]: [] for spec in specs}
    for r in range(rounds):
        sequence = specs if r % 2 == 0 else specs[::-1]  # alternate so drifting load hits every configuration alike
        order.append([spec["name"] for spec in sequence])
        for position, spec in enumerate(sequence):
            spec = {**common, **spec}
            log(f"[bench train] round {r + 1}/{rounds}: {spec['name']} on {model} ({precision}, {recipe}, "
                f"{batch_size} pairs x {steps} steps) ...")
            out = _run_worker(spec, timeout)
            out.update(round=r, position=position, median_step_s=statistics.median(out["step_times_s"]),
                       median_step_cpu_s=statistics.median(out["step_cpu_s"]))
            outs[spec["name"]].append(out)
            log(f"    median {out['median_step_s']:.3f} s/step ({out['median_step_cpu_s']:.3f} CPU-s), "
                f"peak +{out['peak_mb']:.0f} MB")

    peak_after = {p: matmul_peak_gflops(p) for p in precisions}
    peak = {p: {"gflops": max(peak_before[p], peak_after[p]), "before_gflops": peak_before[p],
                "after_gflops": peak_after[p]} for p in precisions}
    runs: dict[str, Any] = {}
    for spec in specs:
        run = runs[spec["name"]] = _combine(outs[spec["name"]], batch_size, peak[precision]["gflops"])
        log(f"[bench train] {spec['name']}: median {run['median_step_s']:.3f} s/step over {rounds} round(s) "
            f"(rounds: {', '.join(f'{t:.3f}' for t in run['round_median_step_s'])}; "
            f"{run['median_step_cpu_s']:.3f} CPU-s), {run['pairs_per_s']:.2f} pairs/s, "
            f"peak +{run['peak_mb']:.0f} MB, ~{run['achieved_gflops']:.2f} GFLOP/s "
            f"({100 * run['fraction_of_peak']:.1f}% of the {precision} matmul peak)")

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
        targets["dpo_vs_trl"] = {"target": f">= {DPO_VS_TRL_TARGET}", "threshold": DPO_VS_TRL_TARGET,
                                 "value": value, "met": value >= DPO_VS_TRL_TARGET,
                                 "cpu_time_value": ratios["ours_dpo_vs_best_trl_pairs_per_cpu_s"]}
    for m in token_methods:
        run = runs[f"ours_{m}"]
        if online_variants:
            online = runs[f"ours_{m}_online"]
            ratios[f"{m}_online_vs_dpo_step_time"] = online["median_step_s"] / dpo["median_step_s"]
            ratios[f"{m}_online_vs_dpo_peak_memory"] = online["peak_mb"] / dpo["peak_mb"]
        ratios[f"{m}_vs_dpo_step_time"] = run["median_step_s"] / dpo["median_step_s"]
        ratios[f"{m}_vs_dpo_step_cpu_time"] = run["median_step_cpu_s"] / dpo["median_step_cpu_s"]
        ratios[f"{m}_vs_dpo_peak_memory"] = run["peak_mb"] / dpo["peak_mb"]
        for what in ("step_time", "peak_memory"):
            value = ratios[f"{m}_vs_dpo_{what}"]
            targets[f"{m}_{what}"] = {"target": f"<= {TOKEN_LEVEL_TARGET}", "threshold": TOKEN_LEVEL_TARGET,
                                      "value": value, "met": value <= TOKEN_LEVEL_TARGET}
        targets[f"{m}_step_time"]["cpu_time_value"] = ratios[f"{m}_vs_dpo_step_cpu_time"]

    import torch
    import transformers

    try:
        import trl as trl_module
        trl_version = trl_module.__version__
    except ImportError:
        trl_version = None
    try:
        import peft as peft_module
        peft_version = peft_module.__version__
    except ImportError:
        peft_version = None
    report = {
        "benchmark": "train_step",
        "config": {**common, "peft": "lora" if lora else "full", "lora": dict(LORA) if lora else None,
                   "rounds": rounds, "gradient_checkpointing": False},
        "order": order, "runs": runs, "ratios": ratios, "targets": targets,
        "peak": {"matmul": "torch.matmul 1024x1024 @ 1024x1024, best of 5 after 2 warm-up products, "
                           "measured before and after the rounds (the larger is used)", **peak},
        "flops_estimate": FLOPS_FORMULA,
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version,
                        "peft": peft_version, "python": platform.python_version(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if out_dir is not None:
        from bench.store import atomic_write_text

        path = report_path(out_dir, model, precision, lora)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True))  # no machine path inside: it is committed
        report["output"] = str(path)
    return report


def _main() -> None:
    spec = json.loads(sys.argv[1])
    worker = _worker_ours if spec["kind"] == "ours" else _worker_trl
    print("PERF " + json.dumps(worker(spec)), flush=True)


if __name__ == "__main__":
    _main()
