"""The training loop shared by preference training and SFT.

One loop, built on ``accelerate`` (DDP / FSDP / DeepSpeed come from it, configured by
``accelerate launch --config_file bench/accelerate/<kind>.yaml`` or ``torchrun``):

* deterministic data order: optimizer step ``s`` uses examples ``stream[s*G:(s+1)*G]`` of a
  stream of seeded epoch permutations (``G`` = global batch); process ``r`` takes its slice of
  each micro-batch. The data position is therefore just the step number, and N processes with
  per-process batch b see exactly the examples of 1 process with batch N*b.
* gradient accumulation, AdamW or RMSprop, warmup + linear/cosine/constant schedules, grad
  clipping, optional bf16 autocast of the model forward (the loss math stays fp32), seeds;
* checkpoints every N steps: ``accelerator.save_state`` (trainable weights: LoRA adapters and method modules; optimizer,
  scheduler, RNG of every process, step), rotated by its ``ProjectConfiguration``; a restarted run
  resumes from the newest complete one (``checkpoints/step-N``);
* per-step metrics through accelerate trackers (``metrics.jsonl``, TensorBoard, W&B when
  installed) and a progress bar; a non-finite loss stops the run naming step, rows and term.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate.tracking import GeneralTracker
from torch import Tensor, nn

from bench.store import atomic_write_json, atomic_write_text
from bench.train.config import TrainConfig
from bench.train.data import Batch, Tokenized, collate


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/inf; the message names the step, the data rows and the term."""


class NonFiniteTerm(FloatingPointError):
    """Raised inside a forward pass: ``term`` went non-finite for batch rows ``rows``."""

    def __init__(self, term: str, rows: list[int] | None = None, detail: str = "") -> None:
        super().__init__(f"{term} is non-finite" + (f" ({detail})" if detail else ""))
        self.term, self.rows, self.detail = term, rows or [], detail


@dataclass
class StepOutput:
    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a finished training run produced (also stored as ``<output_dir>/result.json``)."""

    output_dir: str
    model_path: str  # safetensors directory, loadable with bench.models.load_model
    steps: int
    final_loss: float
    metrics: dict[str, float]  # last step's metrics
    data: dict[str, Any]  # DataReport.to_dict()
    runtime_s: float
    resumed_from_step: int | None
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def load(cls, path: Path) -> "TrainResult":
        return cls(**json.loads(Path(path).read_text()))


def say(accelerator, message: str) -> None:
    """A progress/warning line on stderr (through a run's display when one is active), once (main
    process): stdout stays machine-readable."""
    if accelerator.is_main_process:
        from bench.progress import note

        note(message)


def set_seed(seed: int) -> None:
    from accelerate.utils import set_seed as accelerate_set_seed

    accelerate_set_seed(seed)


# --------------------------------------------------------------------------- data order
def example_stream(n: int, seed: int, start: int, count: int) -> list[int]:
    """Positions ``start .. start+count`` of the stream of seeded epoch permutations of range(n)."""
    out: list[int] = []
    epoch, offset = divmod(start, n)
    while len(out) < count:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist()
        out.extend(order[offset:])
        epoch, offset = epoch + 1, 0
    return out[:count]


def total_steps(config: TrainConfig, n_examples: int, world: int) -> int:
    if config.steps > 0:
        return config.steps
    global_batch = config.batch_size * config.grad_accum * world
    return max(1, math.ceil(config.epochs * n_examples / global_batch))


# --------------------------------------------------------------------------- trackers and checkpoints
class JsonlTracker(GeneralTracker):
    """accelerate tracker of ``metrics.jsonl``, a ``{"step": s, **metrics}`` line per logged step. Its
    first line rewrites the file from that step on (a resumed run recomputes what followed its checkpoint)."""

    name, requires_logging_directory, tracker = "jsonl", False, None

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        if self.tracker is None:
            old = self.path.read_text().splitlines() if self.path.exists() else []
            atomic_write_text(self.path, "".join(f"{x}\n" for x in old if x.strip() and json.loads(x)["step"] < step))
            self.tracker = self.path.open("a")
        self.tracker.write(json.dumps({"step": step, **values}) + "\n")
        self.tracker.flush()

    def finish(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


class DataPosition:
    """Checkpointed custom state: optimizer steps done (step ``s`` reads ``stream[s*G:(s+1)*G]``)."""

    step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def latest_checkpoint(accelerator, output_dir: Path) -> Path | None:
    """The newest complete checkpoint, ``checkpoints/step-N``; anything else there is a save killed
    half-way (accelerate's ``checkpoint_N``), deleted: accelerate's rotation would count it."""
    root = output_dir / "checkpoints"
    done = list(root.glob("step-*"))
    if accelerator.is_main_process and root.is_dir():
        for partial in set(root.iterdir()) - set(done):
            shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


class _RotationNotice(logging.Filter):
    """Drops accelerate's warning at every checkpoint it rotates out (``keep_checkpoints`` asks for the
    rotation; one warning per saved checkpoint buried the run's own progress lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "to make room for new checkpoint" not in record.getMessage()


logging.getLogger("accelerate.accelerator").addFilter(_RotationNotice())


def checkpoint_trainable_only(accelerator) -> None:
    """Checkpoints hold what training changes: the trainable parameters (and the buffers), not the
    frozen weights, which a resumed run loads again from the model it started from. Why: with LoRA on
    SmolLM2-135M a checkpoint was 538 MB of frozen base weights beside 7 MB of adapters, written every
    ``checkpoint_every`` steps (in the default suite, ~4 s of each ~40 s training stage). Loading checks
    that every trainable parameter is in the checkpoint. FSDP, DeepSpeed and Megatron save their models
    their own way and are left to it."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        return

    def frozen(model: nn.Module) -> set[str]:
        return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}  # tied too

    def drop_frozen(models: list, weights: list, output_dir: str) -> None:
        for i, model in enumerate(models):
            skip = frozen(model)
            weights[i] = {k: v for k, v in weights[i].items() if k not in skip}

    def load_kept(models: list, input_dir: str) -> None:
        for i, model in enumerate(models):  # accelerate's own file names (safe_serialization=False)
            path = Path(input_dir) / f"pytorch_model{f'_{i}' if i else ''}.bin"
            missing, unexpected = model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True),
                                                        strict=False)
            missing = sorted(set(missing) - frozen(model))
            if missing or unexpected:
                raise RuntimeError(f"checkpoint {input_dir} does not match the model being trained (missing "
                                   f"{missing[:3]}, unexpected {list(unexpected)[:3]}): delete it to start over")
        models.clear()  # loaded here: accelerate must not load them again (strictly, frozen weights included)

    accelerator.register_save_state_pre_hook(drop_frozen)
    accelerator.register_load_state_pre_hook(load_kept)


def save_checkpoint(accelerator, output_dir: Path, step: int) -> None:
    """accelerate writes ``checkpoints/checkpoint_<step>`` (first deleting the oldest beyond
    ``total_limit``); once every process has written its part it is renamed to ``step-<step>``."""
    accelerator.project_configuration.iteration = step
    # pickle, not safetensors: tied embeddings share storage, which safetensors refuses
    accelerator.save_state(safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        root = output_dir / "checkpoints"
        os.replace(root / f"checkpoint_{step}", root / f"step-{step}")
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------- the loop
def build_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """``config.optimizer``: AdamW, or RMSprop with torch's defaults (alpha 0.99, eps 1e-8, no momentum,
    not centered), as the DPO reference code builds it (``torch.optim.RMSprop(params, lr=lr)``)."""
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)


class WarmupConstant:
    """The DPO reference code's schedule factor: min(1, (step + 1) / (warmup_steps + 1)). A class,
    not a lambda, so that a checkpoint of the scheduler can be saved and loaded."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / (self.warmup_steps + 1))


def build_scheduler(config: TrainConfig, optimizer, steps: int):
    """The lr schedule of ``config.lr_schedule`` over ``steps`` optimizer steps (its field help has the formulas)."""
    if config.lr_schedule == "warmup_constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupConstant(config.warmup_steps))
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[config.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=steps)


def run_loop(*, accelerator, config: TrainConfig, output_dir: Path, module: nn.Module,
             param_groups: list[dict], examples: Sequence[Tokenized], pad_id: int,
             step_fn: Callable[[nn.Module, Batch], StepOutput], run_name: str,
             save_policy: Callable[[int], None] | None = None) -> tuple[int, dict, int | None]:
    """Train ``module`` (policy + method modules) and return (steps, last metrics, resumed_from).

    ``step_fn(prepared_module, batch)`` runs one micro-batch forward and returns its loss/metrics.
    ``save_policy(step)`` is called after each optimizer step listed in ``config.eval_at_steps``
    (before that step's checkpoint, so a resumed run has every earlier snapshot).
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    steps = total_steps(config, len(examples), world)
    optimizer = build_optimizer(config, param_groups)
    scheduler = build_scheduler(config, optimizer, steps)
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    # FSDP replaces the parameters by sharded ones (the prepared optimizer holds those): clip the live ones
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    position = DataPosition()
    accelerator.register_for_checkpointing(position)
    checkpoint_trainable_only(accelerator)
    start, resumed_from = 0, None
    checkpoint = latest_checkpoint(accelerator, output_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start = resumed_from = position.step
        say(accelerator, f"[pobench] resuming {run_name} from {checkpoint} (step {start}/{steps})")

    accelerator.init_trackers(os.environ.get("WANDB_PROJECT", "pobench"), init_kwargs={
        "wandb": {"name": run_name, "config": config.to_dict(), "resume": "allow"}})
    from bench.progress import training_progress

    # a `pobench run` shows the steps in its own display (a step bar, or lines in a log); alone, a tqdm bar
    bar = training_progress(total=steps, initial=start, desc=run_name, enabled=config.progress_bar,
                            main_process=accelerator.is_main_process)
    B, K = config.batch_size, config.grad_accum
    global_batch = B * K * world
    last: dict[str, float] = {}
    try:
        for step in range(start, steps):
            t0, cpu0 = time.perf_counter(), time.process_time()
            stream = example_stream(len(examples), config.seed, step * global_batch, global_batch)
            sums: dict[str, Tensor] = {}
            tokens = torch.zeros((), dtype=torch.float64)
            module.train()
            for micro in range(K):
                lo = micro * B * world + rank * B
                rows = stream[lo:lo + B]
                batch = collate([examples[i] for i in rows], pad_id).to(accelerator.device)
                sync = contextlib.nullcontext() if micro == K - 1 else accelerator.no_sync(module)
                with sync:
                    try:
                        out = step_fn(module, batch)
                    except NonFiniteTerm as exc:
                        bad = [batch.indices[i] for i in exc.rows] or batch.indices
                        raise NonFiniteLossError(
                            f"{run_name}: non-finite {exc.term} at optimizer step {step + 1}, "
                            f"micro-batch {micro}, process {rank}: data rows {bad}"
                            + (f" ({exc.detail})" if exc.detail else "")) from exc
                    if not torch.isfinite(out.loss):
                        raise NonFiniteLossError(f"{run_name}: non-finite loss at optimizer step {step + 1}, "
                                                 f"micro-batch {micro}, process {rank}: data rows {batch.indices}")
                    accelerator.backward(out.loss / K)
                tokens += batch.attention_mask.sum().double()
                for key, value in {"loss": out.loss, **out.metrics}.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float() / K
            grad_norm = accelerator.clip_grad_norm_(trainable, config.max_grad_norm) \
                if config.max_grad_norm > 0 else None
            if grad_norm is not None and not torch.isfinite(grad_norm):
                raise NonFiniteLossError(f"{run_name}: non-finite gradient norm at optimizer step {step + 1} "
                                         f"(data rows of this process: {stream})")
            lr_used = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            # one reduction and one host read per step for all metrics
            keys = sorted(sums)
            packed = torch.stack([sums[k] for k in keys] + [tokens.float()])
            packed = accelerator.reduce(packed, reduction="sum") if world > 1 else packed
            values = packed.tolist()
            elapsed = time.perf_counter() - t0
            last = {k: v / world for k, v in zip(keys, values[:-1])}
            last["tokens_per_s"] = values[-1] / elapsed
            last["lr"] = lr_used
            if grad_norm is not None:
                last["grad_norm"] = float(grad_norm)
            last["step_time_s"] = elapsed
            # CPU seconds of this process (all its threads): robust to other jobs sharing the machine
            last["step_cpu_s"] = time.process_time() - cpu0
            if (step + 1) % config.log_every == 0 or step + 1 == steps:
                accelerator.log(last, step=step + 1)
                bar.advance(step + 1, {k: last[k] for k in ("loss", "rewards/accuracy") if k in last})
            if save_policy is not None and step + 1 in config.eval_at_steps and step + 1 < steps:
                save_policy(step + 1)
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < steps:
                position.step = step + 1
                save_checkpoint(accelerator, output_dir, step + 1)
    finally:
        bar.close()
        # not accelerator.end_training(): it also destroys the process group, which close_run and
        # a second run in the same process (the TIS weight stage trains twice) still need
        for tracker in accelerator.trackers:
            tracker.finish()
    accelerator.wait_for_everyone()
    return steps, last, resumed_from


def finished_result(output_dir: Path, fp: str, overwrite: bool = False) -> TrainResult | None:
    """The cached result of a finished run with the same fingerprint, else None.

    A finished run with a DIFFERENT fingerprint raises (it would be silently replaced otherwise).
    """
    path = output_dir / "result.json"
    if not path.exists():
        return None
    result = TrainResult.load(path)
    if result.fingerprint == fp:
        return result
    if overwrite:
        return None
    raise FileExistsError(f"{output_dir} holds a finished run with a different configuration or data "
                          f"(fingerprint {result.fingerprint} != {fp}); choose another output_dir or pass "
                          "overwrite=True")


@dataclass
class OpenRun:
    """A claimed, seeded run with its policy loaded: what every trainer starts from."""

    output_dir: Path
    fingerprint: str
    accelerator: Any
    started: float
    policy: nn.Module
    tokenizer: Any
    resolved: Any
    use_template: bool


def open_run(kind: str, config: TrainConfig, output_dir: Path, data_parts: Sequence[Any],
             overwrite: bool) -> "TrainResult | OpenRun":
    """The shared start of every trainer: a finished run with the same fingerprint (config minus
    bookkeeping fields, ``kind`` and ``data_parts``) returns its stored :class:`TrainResult`;
    otherwise claim ``output_dir``, seed, and load the policy (LoRA attached)."""
    from bench.train.config import fingerprint
    from bench.prompts import resolve_chat_template
    from bench.train.policy import load_policy

    config.validate()
    semantic = config.semantic()
    fp = fingerprint(kind, semantic, *data_parts)
    cached = finished_result(output_dir, fp, overwrite)
    if cached is not None:
        return cached
    started = time.time()
    accelerator = make_accelerator(config, output_dir)
    prepare_run(output_dir, fp, overwrite, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    set_seed(config.seed)
    policy, tokenizer, resolved = load_policy(config)
    return OpenRun(output_dir, fp, accelerator, started, policy, tokenizer, resolved,
                   resolve_chat_template(tokenizer, config.chat_template))


def policy_saver(run: "OpenRun", config: TrainConfig, module: nn.Module,
                 extra_modules: Callable[[nn.Module], list[nn.Module]] = lambda unwrapped: []) -> Callable[[int], None]:
    """``save_policy(step)`` for :func:`run_loop`: the policy at that step as ``policies/step-<step>``
    (saved like the final model: LoRA merged, method modules beside it)."""
    from bench.train.policy import full_states, save_final

    def save(step: int) -> None:
        unwrapped = run.accelerator.unwrap_model(module)
        extras = extra_modules(unwrapped)
        states = full_states(run.accelerator, module, [unwrapped.policy, *extras])  # FSDP: every process gathers
        if run.accelerator.is_main_process:
            save_final(unwrapped.policy, run.tokenizer, extras, run.output_dir,
                       config.lora is not None, config, name=f"policies/step-{step}", states=states)
        run.accelerator.wait_for_everyone()

    return save


def close_run(run: OpenRun, config: TrainConfig, module: nn.Module, *, steps: int, last: dict[str, float],
              resumed_from: int | None, data_report: dict[str, Any], extra: dict[str, Any],
              extra_modules: Callable[[nn.Module], list[nn.Module]] = lambda unwrapped: []) -> "TrainResult":
    """The shared end of every trainer: save the final model (LoRA merged) and ``result.json`` on
    the main process, drop the checkpoints, and return the stored result on every process."""
    from bench.train.policy import full_states, save_final

    accelerator = run.accelerator
    unwrapped = accelerator.unwrap_model(module)
    extras = extra_modules(unwrapped)
    states = full_states(accelerator, module, [unwrapped.policy, *extras])  # FSDP: every process gathers
    if accelerator.is_main_process:
        model_path = save_final(unwrapped.policy, run.tokenizer, extras, run.output_dir,
                                config.lora is not None, config, states=states)
        result = TrainResult(
            output_dir=str(run.output_dir), model_path=str(model_path), steps=steps,
            final_loss=float(last.get("loss", float("nan"))), metrics=last, data=data_report,
            runtime_s=time.time() - run.started, resumed_from_step=resumed_from, fingerprint=run.fingerprint,
            extra={**extra, "policies": {str(s): str(run.output_dir / "policies" / f"step-{s}")
                                         for s in config.eval_at_steps if s < steps},
                   "model_source": run.resolved.source, "num_processes": accelerator.num_processes,
                   "chat_template": run.use_template, "config": config.to_dict()})
        atomic_write_json(run.output_dir / "result.json", result.to_dict())
        shutil.rmtree(run.output_dir / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()
    return TrainResult.load(run.output_dir / "result.json")


def prepare_run(output_dir: Path, fp: str, overwrite: bool, is_main: bool) -> None:
    """Refuse to mix runs: an output_dir belongs to one fingerprint (or is wiped with overwrite)."""
    run_file = output_dir / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text()).get("fingerprint")
        if previous != fp:
            if not overwrite:
                raise FileExistsError(f"{output_dir} holds a run with another configuration/data "
                                      f"(fingerprint {previous} != {fp}); use another output_dir or overwrite=True")
            if is_main:
                shutil.rmtree(output_dir)
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_file, {"fingerprint": fp})


def make_accelerator(config: TrainConfig, output_dir: Path):
    from accelerate import Accelerator
    from accelerate.tracking import TensorBoardTracker
    from accelerate.utils import ProjectConfiguration, is_wandb_available

    trackers: list = [JsonlTracker(output_dir / "metrics.jsonl")]
    if config.tensorboard:
        trackers.append(TensorBoardTracker("tensorboard", output_dir))  # -> <output_dir>/tensorboard
    if config.wandb and not is_wandb_available():
        raise ImportError("config.wandb=True but the wandb package is not installed: pip install 'pobench[wandb]'")
    if config.wandb is not False and is_wandb_available():
        trackers.append("wandb")
    # accelerate deletes the oldest checkpoint before it writes the next: one slot more, so that
    # keep_checkpoints complete ones survive a kill during a save
    project = ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=True,
                                   total_limit=config.keep_checkpoints + 1)
    # our schedule counts optimizer steps; accelerate would otherwise step it once per process
    return Accelerator(cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False,
                       project_config=project, log_with=trackers)


def autocast(config: TrainConfig, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
