"""Preference training of any registered method (policy vs frozen reference, ``method.loss``).

The trainer never branches on a method's name; it reads ``method.needs`` and
``method.uses_reference``:

* no reference (``uses_reference`` False): reference log-probs are zeros, no reference model.
* the method needs nothing from the reference but its token log-probs (DPO, IPO, cDPO, ...):
  they are computed once per dataset and cached (``<cache>/reference/<hash>.pt``), so training
  runs one forward pass per step (chosen and rejected concatenated).
* ``fkl`` / ``rkl`` / ``ref_hidden`` needed: the reference runs every step under ``no_grad``; the
  full-vocabulary KL is chunked (``methods.token_math``); hidden states only for ``ref_hidden``.
* ``masks`` (MaPO): ``method.reference_masks`` on activations recorded by forward hooks on the
  reference, precomputed once per dataset and cached like the log-probs.
* ``weights`` (TIS-DPO): read from the pairs (``weights_chosen`` / ``weights_rejected``, one per
  response token), produced by :func:`bench.train.tis.estimate_tis_weights`.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

import methods as method_registry
from methods import Method, NonFiniteLoss, PairBatch, token_stats
from methods.activations import record_activations
from bench.models import cache_dir, kept_logits, parse_dtype
from bench.store import atomic_write_bytes
from bench.train.config import PreferenceTrainConfig, TrainConfigError, fingerprint
from bench.train.data import Batch, Tokenized, collate, tokenize_rows
from bench.train.engine import (NonFiniteTerm, StepOutput, TrainResult, autocast, close_run, open_run, policy_saver,
                                run_loop, say)
from bench.train.policy import FrozenReference, PolicyModule, model_shape

ONLINE_REFERENCE_NEEDS = frozenset({"fkl", "rkl", "ref_hidden"})
WEIGHT_KEYS = ("weights_chosen", "weights_rejected")


def reference_plan(method: Method, config: PreferenceTrainConfig) -> str:
    """"none" | "cached" | "online": how reference log-probs are obtained for this method."""
    if not method.uses_reference and not (method.needs & ONLINE_REFERENCE_NEEDS):
        return "none"
    online_needed = bool(method.needs & ONLINE_REFERENCE_NEEDS)
    if config.precompute_reference is True and online_needed:
        raise TrainConfigError(f"precompute_reference=True, but method {method.name!r} needs "
                               f"{sorted(method.needs & ONLINE_REFERENCE_NEEDS)} from the reference at every "
                               "step; leave precompute_reference unset")
    if online_needed or config.precompute_reference is False:
        return "online"
    return "cached"


def shifted(t: Tensor) -> Tensor:
    """Unshifted per-token tensor -> aligned with ``labels = input_ids[:, 1:]``."""
    return t[:, 1:]


def completion_window(batch: Batch) -> int:
    """First column holding a completion token in any row: logits are only needed from the
    position before it, so the prompt-only prefix skips the (vocabulary-sized) output layer."""
    columns = batch.completion_mask.any(0).nonzero()
    return max(1, int(columns[0])) if columns.numel() else 1


def completion_forward(model, batch: Batch, **kwargs):
    """Forward pass whose logits are ``[N, V]``: one row per completion token (the positions that
    predict them, in row-major order), so padding and prompt positions never reach the output
    layer (:func:`bench.models.kept_logits`)."""
    keep = torch.zeros_like(batch.completion_mask, dtype=torch.bool)
    keep[:, :-1] = batch.completion_mask[:, 1:] > 0
    return kept_logits(model, batch.input_ids, batch.attention_mask, keep, **kwargs)


def flat_token_stats(logits: Tensor, ref_logits: Tensor | None, labels: Tensor, mask: Tensor, **options):
    """``token_stats`` on ``[N, V]`` completion-only logits, results placed back as ``[R, T]`` like ``mask``."""
    flat_labels = labels[mask > 0]
    ones = torch.ones(1, flat_labels.shape[0], device=mask.device)
    stats = token_stats(logits[None], flat_labels[None], ones, None if ref_logits is None else ref_logits[None],
                        **options)
    where = mask > 0

    def unflatten(values: Tensor | None) -> Tensor | None:
        if values is None:
            return None
        return torch.zeros(mask.shape, dtype=values.dtype, device=mask.device).masked_scatter(where, values[0])

    return type(stats)(logps=unflatten(stats.logps), ref_logps=unflatten(stats.ref_logps),
                       fkl=unflatten(stats.fkl), rkl=unflatten(stats.rkl))


def window(t: Tensor | None, start: int) -> Tensor | None:
    """Unshifted [R, T] tensor -> the label positions of the window (tokens start .. T-1)."""
    return None if t is None else t[:, start:]


def scatter_completion(values: list[Tensor], mask: Tensor) -> Tensor:
    """Place each row's per-completion-token values at the row's completion positions of ``mask``."""
    full = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    if values:
        full[mask > 0] = torch.cat(values).to(mask.device, torch.float32)
    return full


# --------------------------------------------------------------------------- reference pass
def model_identity(resolved) -> dict[str, Any]:
    """What identifies the reference weights for cache keys: the source and its files' sizes/mtimes."""
    path = Path(resolved.path)
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else []
    return {"path": str(resolved.path), "source": resolved.source,
            "files": [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]}


@torch.no_grad()
def reference_pass(reference: FrozenReference, examples: Sequence[Tokenized], pad_id: int, *,
                   want_logps: bool, mask_method: Method | None, precision: str, batch_size: int,
                   device: torch.device) -> dict[str, list[list[Tensor]]]:
    """Per example and response, the reference's token log-probs / MaPO masks on completion tokens."""
    out: dict[str, list[list[Tensor]]] = {"logps": [], "masks": []}
    dtype_ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        batch = collate(chunk, pad_id).to(device)
        mask = shifted(batch.completion_mask)
        # MaPO hooks the output layer too: its activations must cover every position
        start = completion_window(batch) if mask_method is None else 1
        hooks = (record_activations(reference.model, mask_method.activation_points()) if mask_method is not None
                 else _no_hooks())
        with hooks as activations, dtype_ctx:
            if mask_method is None:
                logits, _ = completion_forward(reference, batch)
            else:  # full logits: the output layer is one of the hooked activations
                logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                logits = logits[:, :-1][batch.completion_mask[:, 1:] > 0]
        per_row: dict[str, list[Tensor]] = {}
        if want_logps:
            window_mask = window(batch.completion_mask, start)
            stats = flat_token_stats(logits, None, window(batch.input_ids, start), window_mask)
            per_row["logps"] = [stats.logps[i][window_mask[i] > 0].cpu() for i in range(mask.shape[0])]
        if mask_method is not None:
            trimmed = {kind: [a[:, :-1] for a in acts] for kind, acts in activations.items()}
            masks = mask_method.reference_masks(trimmed, mask)
            per_row["masks"] = [masks[i][mask[i] > 0].float().cpu() for i in range(mask.shape[0])]
        n = len(chunk)
        for key, rows in per_row.items():
            # rows are [all chosen..., all rejected...]
            out[key].extend([rows[i], rows[n + i]] for i in range(n))
    return out


class _no_hooks:
    def __enter__(self):
        return {}

    def __exit__(self, *exc):
        return False


def cached_reference_pass(key_parts: dict, reference: FrozenReference, examples, pad_id, *, want_logps: bool,
                          mask_method: Method | None, config: PreferenceTrainConfig, device, is_main: bool):
    """``reference_pass`` cached under ``<cache>/reference/<hash>.pt`` (one file per model+data+kind)."""
    results: dict[str, list] = {}
    wanted = [("logps", want_logps, None), ("masks", mask_method is not None, mask_method)]
    for kind, needed, m in wanted:
        if not needed:
            continue
        key = fingerprint(key_parts, kind, config.precision,
                          None if m is None else (type(m).__module__, type(m).__qualname__, m.hparams()))
        path = cache_dir() / "reference" / f"{kind}-{key}.pt"
        if path.exists():
            results[kind] = torch.load(path)
            continue
        computed = reference_pass(reference, examples, pad_id, want_logps=kind == "logps",
                                  mask_method=m if kind == "masks" else None, precision=config.precision,
                                  batch_size=max(1, config.batch_size), device=device)[kind]
        results[kind] = computed
        if is_main:
            buffer = io.BytesIO()
            torch.save(computed, buffer)
            atomic_write_bytes(path, buffer.getvalue())
    return results


# --------------------------------------------------------------------------- the trainable module
class PreferenceModule(PolicyModule):
    """Policy + method (whose ``modules()`` are trainable extras); ``forward`` returns the loss.

    Everything trainable runs inside this forward so DDP/FSDP see one module.
    """

    def __init__(self, policy: nn.Module, method: Method, reference: FrozenReference | None, plan: str,
                 config: PreferenceTrainConfig) -> None:
        super().__init__()
        self.policy = policy
        self.method = method
        object.__setattr__(self, "reference", reference)  # not a submodule: never trained or saved
        self.plan = plan
        self.config = config

    def forward(self, batch: Batch, cached: dict[str, Tensor]) -> StepOutput:
        needs = self.method.needs
        device = batch.input_ids.device
        start = completion_window(batch)
        with autocast(self.config, device):
            logits, _ = completion_forward(self.policy, batch)
        ref_logits = ref_hidden = None
        if self.plan == "online":
            with autocast(self.config, device):
                ref_logits, ref_out = completion_forward(self.reference, batch,
                                                         output_hidden_states="ref_hidden" in needs)
            if "ref_hidden" in needs:  # per-layer outputs (embedding output excluded), window positions
                ref_hidden = torch.stack([h[:, start - 1:-1] for h in ref_out.hidden_states[1:]], dim=2).float()
        labels, mask = window(batch.input_ids, start), window(batch.completion_mask, start)
        stats = flat_token_stats(logits, ref_logits, labels, mask, fkl="fkl" in needs, rkl="rkl" in needs,
                                 chunk_size=self.config.token_chunk_size)
        if stats.ref_logps is not None:
            ref_logps = stats.ref_logps
        elif "ref_logps" in cached:
            ref_logps = cached["ref_logps"]
        else:
            ref_logps = torch.zeros_like(stats.logps)
        n = batch.input_ids.shape[0] // 2
        fields: dict[str, Tensor | None] = {
            "logps": stats.logps, "ref_logps": ref_logps, "mask": mask, "fkl": stats.fkl, "rkl": stats.rkl,
            "weights": window(batch.weights, start) if "weights" in needs else None,
            "masks": cached.get("masks"), "ref_hidden": ref_hidden,
        }
        pair = {}
        for name, value in fields.items():
            if value is None:
                continue
            pair[f"{name}_w"], pair[f"{name}_l"] = value[:n], value[n:]
        floating = [(name, value) for name, value in pair.items() if value.is_floating_point()]
        finite = torch.stack([torch.isfinite(value).all() for _, value in floating])
        if not bool(finite.all()):  # one host read per step; the details only when something broke
            name, value = next((nv for nv, ok in zip(floating, finite.tolist()) if not ok))
            rows = sorted({int(r) for r in (~torch.isfinite(value)).nonzero()[:, 0].tolist()})
            raise NonFiniteTerm(f"input {name}", rows, "before the method's loss")
        try:
            out = self.method.loss(PairBatch(**pair))
        except NonFiniteLoss as exc:
            raise NonFiniteTerm(f"{self.method.name} loss", exc.pairs, str(exc)) from exc
        metrics = dict(out.metrics)
        # sequence-level KL of the policy from the reference, wherever it was computed anyway
        for kind, values in (("fkl", stats.fkl), ("rkl", stats.rkl)):
            if values is not None:
                per_seq = (values * mask).sum(-1).detach()
                metrics[f"kl/seq_{kind}_chosen"] = per_seq[:n].mean()
                metrics[f"kl/seq_{kind}_rejected"] = per_seq[n:].mean()
        return StepOutput(out.loss, metrics)


# --------------------------------------------------------------------------- public entry point
def parameter_counts(policy: nn.Module, extra_params: Sequence[Tensor] = ()) -> dict[str, int]:
    """What a run trains: the policy's parameters in all, the trainable ones (the policy's with
    ``requires_grad`` plus a method's own, e.g. SparsePO's mask weights) and the trainable ones outside
    LoRA adapters (0 with LoRA, all of the policy for full fine-tuning)."""
    trainable = [p for p in policy.parameters() if p.requires_grad]
    return {"params": sum(p.numel() for p in policy.parameters()),
            "params_trainable": sum(p.numel() for p in [*trainable, *extra_params]),
            "params_trainable_non_adapter": sum(p.numel() for name, p in policy.named_parameters()
                                                if p.requires_grad and "lora_" not in name)}


def train_preference(config: PreferenceTrainConfig, pairs: Sequence[dict], method: Method | str,
                     output_dir: str | Path, *, overwrite: bool = False) -> TrainResult:
    """Train ``config.model`` on preference ``pairs`` with ``method``; return a :class:`TrainResult`.

    Args:
        config: model id, LoRA, optimisation, lengths, precision, checkpointing (see the dataclass).
        pairs: dicts with ``prompt``, ``chosen``, ``rejected`` (strings) and, for methods that need
            token weights (TIS-DPO), ``weights_chosen`` / ``weights_rejected`` from
            :func:`bench.train.tis.estimate_tis_weights`. Bad rows are dropped and counted
            (``result.data``) or raise (``config.bad_rows="error"``).
        method: a ``methods.Method`` instance (hyperparameters set) or a registered name.
        output_dir: receives ``model/`` (safetensors + tokenizer, LoRA merged; loadable with
            ``bench.models.load_model``; ``method_modules.pt`` holds e.g. SparsePO mask heads),
            ``metrics.jsonl`` (one line per step), ``tensorboard/``, ``checkpoints/`` while running,
            ``run.json`` and ``result.json``.

    Calling again with a finished ``output_dir`` (same config, method and data) returns the stored
    result without training; an interrupted run (even ``kill -9``) resumes from its newest
    checkpoint and ends with the same weights and losses as an uninterrupted run.
    Works the same under ``accelerate launch`` / ``torchrun`` with several processes.
    """
    if isinstance(method, str):
        method = method_registry.get(method)
    output_dir = Path(output_dir)
    run = open_run("preference", config, output_dir, (method.name, method.hparams(), list(pairs)), overwrite)
    if isinstance(run, TrainResult):
        return run  # finished earlier with the same config, method and data
    accelerator, policy, tokenizer, resolved = run.accelerator, run.policy, run.tokenizer, run.resolved
    needs_weights = "weights" in method.needs
    if needs_weights and not all(k in row for row in pairs[:1] for k in WEIGHT_KEYS):
        raise TrainConfigError(f"method {method.name!r} needs token weights: run the TIS weight stage "
                               "(bench.train.tis.estimate_tis_weights) and train on the pairs it returns")
    examples, report = tokenize_rows(
        pairs, tokenizer, response_keys=("chosen", "rejected"), max_length=config.max_length,
        prompt_format=config.prompt_format(), add_eos=config.add_eos,
        bad_rows=config.bad_rows, prompt_overflow=config.prompt_overflow, weight_keys=WEIGHT_KEYS if needs_weights else None)
    if report.dropped:
        say(accelerator, f"[pobench] {method.name}: {report.summary()}")

    hidden_size, num_layers = model_shape(policy)
    method.setup(hidden_size, num_layers)
    plan = reference_plan(method, config)
    needs_reference_model = plan != "none" or "masks" in method.needs
    ref_dtype = parse_dtype(config.reference_dtype or ("bf16" if config.precision == "bf16" else "fp32"))
    reference = FrozenReference(policy, config.lora is not None, ref_dtype) if needs_reference_model else None
    if reference is not None and not reference.lora:
        reference.model.to(accelerator.device)
    policy.to(accelerator.device)
    method.to(accelerator.device)

    cache: dict[str, list] = {}
    if plan == "cached" or "masks" in method.needs:
        key_parts = {"model": model_identity(resolved), "lora": config.lora is not None, "dtype": str(ref_dtype),
                     "data": [(e.prompt, e.responses) for e in examples]}
        cache = cached_reference_pass(key_parts, reference, examples, tokenizer.pad_token_id,
                                      want_logps=plan == "cached",
                                      mask_method=method if "masks" in method.needs else None, config=config,
                                      device=accelerator.device, is_main=accelerator.is_main_process)
    position = {e.index: i for i, e in enumerate(examples)}
    if plan != "online" and reference is not None and not reference.lora:
        reference = None  # everything needed from it is cached: free its memory

    module = PreferenceModule(policy, method, reference, plan, config)

    def step_fn(prepared: nn.Module, batch: Batch) -> StepOutput:
        mask = window(batch.completion_mask, completion_window(batch))
        cached: dict[str, Tensor] = {}
        for key, name in (("logps", "ref_logps"), ("masks", "masks")):
            if key in cache:
                rows = [cache[key][position[i]] for i in batch.indices]
                values = [r[0] for r in rows] + [r[1] for r in rows]
                cached[name] = scatter_completion(values, mask)
        return prepared(batch, cached)

    policy_params = [p for p in policy.parameters() if p.requires_grad]
    extra_params = [p for m in method.modules() for p in m.parameters() if p.requires_grad]
    groups = [{"params": policy_params, "weight_decay": config.weight_decay},
              {"params": extra_params, "weight_decay": config.method_weight_decay}]
    parameters = parameter_counts(policy, extra_params)  # for the run record and `pobench bench train`
    steps, last, resumed_from = run_loop(
        accelerator=accelerator, config=config, output_dir=output_dir, module=module, param_groups=groups,
        examples=examples, pad_id=tokenizer.pad_token_id, step_fn=step_fn,
        run_name=f"{method.name}",
        save_policy=policy_saver(run, config, module, lambda unwrapped: list(unwrapped.method.modules())))

    return close_run(run, config, module, steps=steps, last=last, resumed_from=resumed_from,
                     data_report=report.to_dict(),
                     extra={"method": method.name, "hparams": method.hparams(), "reference": plan,
                            "parameters": parameters},
                     extra_modules=lambda unwrapped: list(unwrapped.method.modules()))
