"""Preference training of any registered method (policy vs frozen reference, ``method.loss``).

The trainer never branches on a method's name; it reads ``method.needs`` and
``method.uses_reference``:

* no reference (``uses_reference`` False): reference log-probs are zeros, no reference model.
* the method needs nothing from the reference but its token log-probs (DPO, IPO, cDPO, ...):
  they are computed once per dataset and cached (``<cache>/reference/<hash>.pt``), so training
  runs one forward pass per step (chosen and rejected concatenated).
* ``fkl`` / ``ref_hidden`` needed, the output layer frozen (LoRA), fp32, ``token_reference: cached``: one
  reference pass per dataset stores, per completion token, the reference's final hidden state, its
  expected output embedding and log-normaliser (``fkl`` then follows exactly from the policy's own
  logits: ``methods.token_math.fkl_from_reference_summary``) and, for ``ref_hidden``, every layer's
  hidden state; cached like the log-probs, so training runs one forward pass per step as DPO does.
* otherwise (``rkl``, a trained output layer, bf16, ``token_reference: online``): the reference runs every step
  under ``no_grad``; the full-vocabulary KL is chunked (``methods.token_math``).
* ``masks`` (MaPO): ``method.reference_masks`` on activations recorded by forward hooks on the
  reference, precomputed once per dataset and cached like the log-probs.
* ``weights`` (TIS-DPO): read from the pairs (``weights_chosen`` / ``weights_rejected``, one per
  response token), produced by :func:`bench.train.tis.estimate_tis_weights`.
"""
from __future__ import annotations

import dataclasses
import io
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

import methods as method_registry
from methods import Method, NonFiniteLoss, PairBatch, token_stats
from methods.activations import record_activations
from methods.token_math import fkl_from_reference_summary
from bench.models import cache_dir, kept_logits, parse_dtype
from bench.store import atomic_write_bytes, locked_file
from bench.train.config import PreferenceTrainConfig, TrainConfigError, fingerprint
from bench.train.data import Batch, Tokenized, collate, tokenize_rows
from bench.train.engine import (NonFiniteTerm, StepOutput, TrainResult, autocast, close_run, open_run, policy_saver,
                                run_loop, say)
from bench.train.policy import FrozenReference, PolicyModule, model_shape

ONLINE_REFERENCE_NEEDS = frozenset({"fkl", "rkl", "ref_hidden"})
WEIGHT_KEYS = ("weights_chosen", "weights_rejected")
#: above this many bytes of per-layer reference hidden states (``ref_hidden``: tokens x layers x d fp32)
#: the reference runs at every step instead of being cached (the cache is held in memory while training)
MAX_CACHED_HIDDEN_BYTES = 2 << 30
#: examples per batch of the reference pass: fixed, not the run's batch size, so that every run (and every
#: process of a distributed one, and a run computing a pass for others) reads the same values whatever its
#: batching (padding may change float rounding, which the KL's difference of two models' terms would show)
REFERENCE_PASS_BATCH = 8
#: a reference pass is cut into about this many shards (whole batches), the unit that runs side by side
#: split between them (:func:`cached_reference_pass`)
REFERENCE_PASS_SHARDS = 8
#: per completion token, what the cached reference pass stores for ``fkl`` (see fkl_from_reference_summary)
SUMMARY_KEYS = ("ref_lse", "ref_final_hidden", "ref_expected_embedding")
#: cached reference kinds -> the PreferenceModule input they become
CACHED_FIELDS = {"logps": "ref_logps", "masks": "masks", "hidden": "ref_hidden"}


class SummaryUnavailable(Exception):
    """The reference's per-token summary cannot stand in for its forward in this run (message: why)."""


def output_layer_frozen(policy: nn.Module) -> bool:
    """True when the policy's output layer is a plain linear layer that nothing trains (LoRA on attention
    or MLP projections): then policy and reference share it, which the cached fkl summary relies on."""
    layer = policy.get_output_embeddings() if hasattr(policy, "get_output_embeddings") else None
    return type(layer) is nn.Linear and not any(p.requires_grad for p in layer.parameters())


def _config_blocker(needs: frozenset[str], config: PreferenceTrainConfig) -> str | None:
    """What in the method's needs or the run's config rules the cached reference summary out."""
    if "rkl" in needs:
        return "rkl needs the reference's whole distribution under the policy's, at every step"
    if config.precision != "fp32":
        # measured on SmolLM2-135M: bf16 logits and hidden states do not cancel between the cached pass and
        # the step (mean error 2.4e-2 nats per token against a KL of 2.7e-3; 1.5e-3 online; fp32: 2e-6)
        return "bf16 rounding does not cancel between the cached reference and the step's policy"
    if config.lora is None:
        return "full fine-tuning trains the output layer, so it is not the reference's"
    return None


def summary_blocker(method: Method, config: PreferenceTrainConfig, output_frozen: bool) -> str | None:
    """Why this run's token-level needs cannot be served by the cached reference summary (None: they can)."""
    if config.token_reference == "online":
        return "token_reference is online"
    blocker = _config_blocker(method.needs, config)
    if blocker is None and not output_frozen:
        return "the output layer is trained (adapters on it), so it is not the reference's"
    return blocker


def unread_train_fields(method_name: str, hparams: dict[str, Any], config: PreferenceTrainConfig) -> dict[str, Any]:
    """Train-config fields that training ``method_name`` with ``hparams`` under ``config`` never reads, each
    with the value that leaves it out of run keys (its earlier default)."""
    needs = method_registry.get(method_name, **hparams).needs
    if not needs & {"fkl", "ref_hidden"} or config.precompute_reference is False or _config_blocker(needs, config):
        return {"token_reference": "online"}  # the reference runs every step whatever it says
    return {}


def reference_plan(method: Method, config: PreferenceTrainConfig, policy: nn.Module | None = None) -> str:
    """"none" | "cached" | "online": whether the reference runs at every step ("online") or everything
    needed from it comes from one cached pass per dataset ("cached"). ``policy``: the model being trained
    (its output layer decides whether token-level needs can be cached; None = they cannot)."""
    if not method.uses_reference and not (method.needs & ONLINE_REFERENCE_NEEDS):
        return "none"
    token_needs = method.needs & ONLINE_REFERENCE_NEEDS
    output_frozen = policy is not None and output_layer_frozen(policy)
    blocker = summary_blocker(method, config, output_frozen) if token_needs else None
    if config.precompute_reference is True and blocker:
        raise TrainConfigError(f"precompute_reference=True, but method {method.name!r} needs "
                               f"{sorted(token_needs)} from the reference at every step here ({blocker}); "
                               "leave precompute_reference unset")
    if blocker or config.precompute_reference is False:
        return "online"
    return "cached"


def reference_pass_kinds(method: Method, plan: str) -> frozenset[str]:
    """The cached reference passes a run with this plan reads (computing those not cached yet)."""
    token_needs = method.needs & ONLINE_REFERENCE_NEEDS
    kinds = set()
    if plan == "cached":
        kinds = {"logps"} | ({"summary"} if "fkl" in token_needs else set()) \
            | ({"hidden"} if "ref_hidden" in token_needs else set())
    return frozenset(kinds | ({"masks"} if "masks" in method.needs else set()))


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


@contextmanager
def _output_layer_io(model):
    """Records the input (final hidden states) and output of ``model``'s output layer during a forward."""
    seen: dict[str, Tensor] = {}

    def hook(module, args, output):
        seen["hidden"], seen["logits"] = args[0], output

    handle = model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def completion_forward_with_hidden(model, batch: Batch, **kwargs):
    """:func:`completion_forward` plus the ``[N, d]`` hidden states its output layer turned into the
    ``[N, V]`` logits. Raises :class:`SummaryUnavailable` when the model changes the output layer's
    result before returning it (e.g. logit soft-capping): then logits are not linear in those states."""
    with _output_layer_io(model) as seen:
        logits, out = completion_forward(model, batch, **kwargs)
    produced = seen.get("logits")
    if produced is None or produced.shape != out.logits.shape or produced.data_ptr() != out.logits.data_ptr():
        raise SummaryUnavailable("the model transforms its output layer's logits before returning them")
    hidden = seen["hidden"]
    if hidden.shape[:-1] != logits.shape[:-1]:  # a full forward (no logits_to_keep): keep completion rows
        keep = torch.zeros_like(batch.completion_mask, dtype=torch.bool)
        keep[:, :-1] = batch.completion_mask[:, 1:] > 0
        hidden = hidden[keep]
    return logits, hidden.reshape(logits.shape[0], -1), out


def flat_token_stats(logits: Tensor, ref_logits: Tensor | None, labels: Tensor, mask: Tensor, *,
                     summary: dict[str, Tensor] | None = None, hidden: Tensor | None = None, **options):
    """``token_stats`` on ``[N, V]`` completion-only logits, results placed back as ``[R, T]`` like ``mask``.

    ``summary`` (flat ``SUMMARY_KEYS`` tensors of the cached reference pass) with ``hidden`` (the policy's
    ``[N, d]`` output-layer inputs): ``fkl`` from them instead of from ``ref_logits``."""
    flat_labels = labels[mask > 0]
    ones = torch.ones(1, flat_labels.shape[0], device=mask.device)
    stats = token_stats(logits[None], flat_labels[None], ones, None if ref_logits is None else ref_logits[None],
                        **options)
    if summary is not None:
        stats.fkl = fkl_from_reference_summary(stats.lse[0], hidden, summary["ref_lse"], summary["ref_final_hidden"],
                                               summary["ref_expected_embedding"])[None]
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
    """Place each row's per-completion-token values (``[n, ...]``) at the row's completion positions of
    ``mask``: ``[R, T, ...]``, zero elsewhere."""
    trailing = tuple(values[0].shape[1:]) if values else ()
    full = torch.zeros((*mask.shape, *trailing), dtype=torch.float32, device=mask.device)
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
                   kinds: frozenset[str], mask_method: Method | None, precision: str, batch_size: int,
                   device: torch.device, summary_chunk: int = 256) -> dict[str, list[list[Tensor]]]:
    """Per example, [chosen, rejected] values on completion tokens of what ``kinds`` asks for, all from
    one forward of the reference per batch:

    * ``logps``: the reference's token log-probs [n];
    * ``masks``: MaPO's masks [n] from hooked activations (``mask_method``; a pass of its own: it needs every
      position's logits and holds every hooked activation of a batch, so it runs in the training's batches);
    * ``summary``: ``SUMMARY_KEYS`` for ``fkl`` - log-normaliser [n], the output layer's input [n, d] and
      the expected output embedding sum_v p_ref(v) W_v [n, d] (computed ``summary_chunk`` rows at a time);
    * ``hidden``: every layer's hidden state [n, L, d] (embedding output excluded), for ``ref_hidden``.

    Which kinds share the forward does not change any of them: the completion rows' logits are the same
    bits with or without hidden states (checked on SmolLM2 and in tests/train/test_train_engine.py), so
    one run may compute them for others.
    """
    if "masks" in kinds and kinds != {"masks"}:
        raise ValueError("reference_pass: masks need a pass of their own")
    names = {"summary": SUMMARY_KEYS, "hidden": ("hidden",)}
    out: dict[str, list[list[Tensor]]] = {name: [] for kind in kinds for name in names.get(kind, (kind,))}
    dtype_ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    weight = reference.get_output_embeddings().weight.float() if "summary" in kinds else None
    for first in range(0, len(examples), batch_size):
        chunk = list(examples[first:first + batch_size])
        batch = collate(chunk, pad_id).to(device)
        mask = shifted(batch.completion_mask)
        # MaPO hooks the output layer too: its activations must cover every position
        start = completion_window(batch) if mask_method is None else 1
        hooks = (record_activations(reference.model, mask_method.activation_points()) if mask_method is not None
                 else _no_hooks())
        hidden = ref_out = None
        with hooks as activations, dtype_ctx:
            if mask_method is not None:  # full logits: the output layer is one of the hooked activations
                logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                logits = logits[:, :-1][batch.completion_mask[:, 1:] > 0]
            elif "summary" in kinds:
                logits, hidden, ref_out = completion_forward_with_hidden(reference, batch,
                                                                         output_hidden_states="hidden" in kinds)
            else:
                logits, ref_out = completion_forward(reference, batch, output_hidden_states="hidden" in kinds)
        flat: dict[str, Tensor] = {}
        counts = (mask > 0).sum(1).tolist()
        if "logps" in kinds:
            window_mask = window(batch.completion_mask, start)
            flat["logps"] = flat_token_stats(logits, None, window(batch.input_ids, start), window_mask).logps[
                window_mask > 0]
        if "summary" in kinds:
            lse, expected = [], []
            for rows in range(0, logits.shape[0], summary_chunk):
                x = logits[rows:rows + summary_chunk].float()
                x_lse = x.logsumexp(-1, keepdim=True)
                lse.append(x_lse.squeeze(-1))
                expected.append(x.sub_(x_lse).exp_() @ weight)
            flat.update(ref_lse=torch.cat(lse), ref_final_hidden=hidden.float(),
                        ref_expected_embedding=torch.cat(expected))
        if "hidden" in kinds:  # the positions that predict completion tokens, like the logits' rows
            keep = mask > 0
            flat["hidden"] = torch.stack([h[:, :-1][keep] for h in ref_out.hidden_states[1:]], dim=1).float()
        if mask_method is not None:
            trimmed = {kind: [a[:, :-1] for a in acts] for kind, acts in activations.items()}
            flat["masks"] = mask_method.reference_masks(trimmed, mask)[mask > 0].float()
        n = len(chunk)
        for key, values in flat.items():
            rows = values.cpu().split(counts)  # rows are [all chosen..., all rejected...]
            out[key].extend([rows[i], rows[n + i]] for i in range(n))
    return out


class _no_hooks:
    def __enter__(self):
        return {}

    def __exit__(self, *exc):
        return False


def cached_hidden_bytes(examples: Sequence[Tokenized], hidden_size: int, num_layers: int) -> int:
    """fp32 bytes of every layer's hidden state at every completion token of ``examples``."""
    tokens = sum(len(r) for e in examples for r in e.responses)
    return tokens * hidden_size * num_layers * 4


def pass_shards(count: int) -> list[range]:
    """The example ranges a reference pass over ``count`` examples is cut into: about
    ``REFERENCE_PASS_SHARDS`` of them, each whole batches of ``REFERENCE_PASS_BATCH`` (so every example is
    in the batch it would be in without shards, and gets the same bits)."""
    size = REFERENCE_PASS_BATCH * max(1, math.ceil(count / (REFERENCE_PASS_SHARDS * REFERENCE_PASS_BATCH)))
    return [range(first, min(first + size, count)) for first in range(0, count, size)]


def cached_reference_pass(key_parts: dict, reference: FrozenReference, examples, pad_id, *, kinds: frozenset[str],
                          mask_method: Method | None, config: PreferenceTrainConfig, device,
                          is_main: bool, exclusive: bool = False, along: frozenset[str] = frozenset(),
                          swapped: bool = False) -> dict[str, list]:
    """``reference_pass`` over ``examples``, cached per kind and shard (:func:`pass_shards`) under
    ``<cache>/reference/<kind>-<hash>-<shard>.pt`` (hash: model, data in one of its two orientations,
    kind, precision, batching, the mask method).
    Returns per-example lists of ``kinds`` keyed like :func:`reference_pass`'s output.

    Every kind a shard misses is computed in one forward (MaPO's masks in one of their own, in batches of
    the run's size: they hold every hooked activation of a batch). ``along``: kinds other runs on the same data
    will read (a suite's TDPO summary and MaPO masks next to its DPO; ``mask_method`` is whose masks):
    computed in the same forwards and cached for them, not returned.

    ``exclusive`` (a run of one process): each shard is computed under a lock; a run skips the shards
    another run holds and comes back to them at the end (reading what was written, computing only what
    it needs and is still missing), so runs started side by side (``executor.jobs``) split one pass
    between them instead of computing it twice. Not with several processes per run: their passes may
    hold collectives, which a lock must not split.

    ``swapped``: the examples are a dataset's pairs with chosen and rejected swapped (TIS-DPO's reverse
    DPO); the pass is then computed and cached in the dataset's orientation and read swapped back."""
    shards = pass_shards(len(examples))
    kinds, wanted = frozenset(kinds), frozenset(kinds) | frozenset(along)
    own_names = {name for kind in kinds for name in (SUMMARY_KEYS if kind == "summary" else (kind,))}
    # the same pairs with chosen and rejected swapped are the same sequences: a swapped run computes and
    # caches the pass in the dataset's orientation, each pair's two entries swapped back for itself; so every
    # value is computed the same way whoever computes it (MaPO's masks are not the same bits with the rows
    # of a batch in the other order)
    pass_examples = [swap_responses(e) for e in examples] if swapped else list(examples)
    canonical = {**key_parts, "data": [(e.prompt, e.responses) for e in pass_examples]} if swapped else key_parts
    layout = (config.precision, REFERENCE_PASS_BATCH, len(shards[0]) if shards else 0)
    mask_id = None if mask_method is None else (type(mask_method).__module__, type(mask_method).__qualname__,
                                                mask_method.hparams())
    # masks: batches of the training's size (memory: every hooked activation of a batch is held at once)
    mask_batch = max(1, config.batch_size)
    keys = {kind: fingerprint(canonical, kind, *layout, (mask_id, mask_batch) if kind == "masks" else None)
            for kind in wanted}
    folder = cache_dir() / "reference"

    def path(kind: str, shard: int) -> Path:
        return folder / f"{kind}-{keys[kind]}-{shard}.pt"

    values: list[dict[str, list]] = [{} for _ in shards]  # per shard, in the cached orientation

    def read(kind: str, shard: int) -> None:
        stored = torch.load(path(kind, shard))
        values[shard].update(stored if kind == "summary" else {kind: stored})

    def fill(shard: int, want: frozenset[str]) -> None:
        """Compute what of ``want`` the shard misses (one forward; masks in one of their own), write it,
        read the rest of ``kinds``."""
        todo = frozenset(kind for kind in want if not path(kind, shard).exists())
        for group in (todo - {"masks"}, todo & {"masks"}):
            if not group:
                continue
            computed = reference_pass(reference, [pass_examples[i] for i in shards[shard]], pad_id, kinds=group,
                                      mask_method=mask_method if "masks" in group else None,
                                      precision=config.precision, device=device,
                                      batch_size=mask_batch if "masks" in group else REFERENCE_PASS_BATCH)
            values[shard].update({name: v for name, v in computed.items() if name in own_names})
            if is_main:
                for kind in group:
                    buffer = io.BytesIO()
                    torch.save({k: computed[k] for k in SUMMARY_KEYS} if kind == "summary" else computed[kind], buffer)
                    atomic_write_bytes(path(kind, shard), buffer.getvalue())
        for kind in kinds - todo:
            read(kind, shard)

    lock_key = fingerprint(canonical, *layout)
    deferred = []
    for shard in range(len(shards)):
        if not exclusive or all(path(kind, shard).exists() for kind in wanted):
            fill(shard, wanted)
            continue
        lock = locked_file(folder / f"pass-{lock_key}-{shard}.lock", wait=False)
        if lock is None:  # another run is computing it: come back at the end
            deferred.append(shard)
            continue
        with lock:
            fill(shard, wanted)
    for shard in deferred:
        with locked_file(folder / f"pass-{lock_key}-{shard}.lock", wait=True):
            fill(shard, frozenset(kinds))
    results: dict[str, list] = {name: [] for name in own_names}
    for shard_values in values:
        for name in own_names:
            per_example = shard_values[name]
            results[name].extend([pair[::-1] for pair in per_example] if swapped else per_example)
    return results


def swap_responses(example: Tokenized) -> Tokenized:
    """The example with chosen and rejected (and their per-token fields) swapped."""
    return dataclasses.replace(example, responses=example.responses[::-1],
                               weights=None if example.weights is None else example.weights[::-1],
                               eos_last=example.eos_last[::-1])


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
        summary = {key: cached[key] for key in SUMMARY_KEYS if key in cached} or None
        hidden = None
        with autocast(self.config, device):
            if summary is not None:
                logits, hidden, _ = completion_forward_with_hidden(self.policy, batch)
            else:
                logits, _ = completion_forward(self.policy, batch)
        ref_logits = ref_hidden = None
        if self.plan == "online":
            with autocast(self.config, device):
                ref_logits, ref_out = completion_forward(self.reference, batch,
                                                         output_hidden_states="ref_hidden" in needs)
            if "ref_hidden" in needs:  # per-layer outputs (embedding output excluded), window positions
                ref_hidden = torch.stack([h[:, start - 1:-1] for h in ref_out.hidden_states[1:]], dim=2).float()
        elif "ref_hidden" in needs:
            ref_hidden = cached["ref_hidden"]
        labels, mask = window(batch.input_ids, start), window(batch.completion_mask, start)
        stats = flat_token_stats(logits, ref_logits, labels, mask, fkl="fkl" in needs and summary is None,
                                 rkl="rkl" in needs, chunk_size=self.config.token_chunk_size,
                                 summary=summary, hidden=hidden)
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


def kinds_along(share_with: Sequence[Method | tuple[Method, dict[str, Any]]], config: PreferenceTrainConfig,
                policy: nn.Module, hidden_bytes: int, mask_method: Method | None) -> tuple[set[str], Method | None]:
    """The reference-pass kinds that runs of ``share_with`` (same pairs, this run's config or it updated
    with the given fields) will read, and the method whose masks a pass computes (``mask_method``, this
    run's own if it needs masks; else the first of ``share_with`` that does: a pass holds one method's masks)."""
    along: set[str] = set()
    for item in share_with:
        other, settings = item if isinstance(item, tuple) else (item, {})
        try:
            other_config = config.model_copy(update=settings) if settings else config
            other_kinds = reference_pass_kinds(other, reference_plan(other, other_config, policy))
        except TrainConfigError:  # that run stops with this message; it reads nothing
            continue
        if "masks" in other_kinds:
            if mask_method is None:
                mask_method = other
            if mask_method is not other and (type(mask_method), mask_method.hparams()) != (type(other), other.hparams()):
                other_kinds = other_kinds - {"masks"}
        if "hidden" in other_kinds and hidden_bytes > MAX_CACHED_HIDDEN_BYTES:
            other_kinds = other_kinds - {"hidden"}  # that run runs the reference every step instead
        along |= other_kinds
    return along, mask_method


def train_preference(config: PreferenceTrainConfig, pairs: Sequence[dict], method: Method | str,
                     output_dir: str | Path, *, overwrite: bool = False,
                     share_with: Sequence[Method | tuple[Method, dict[str, Any]]] = (),
                     swapped_pairs: bool = False) -> TrainResult:
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
        share_with: methods that other runs train on the same pairs (a suite's other trainings), each alone
            (the same config) or with the config fields its run sets otherwise (``(method, {"token_reference":
            "cached"})``): what they need from the reference pass is computed in this run's forwards too and
            cached for them (:func:`cached_reference_pass`'s ``along``). Changes no value of this run.
        swapped_pairs: ``pairs`` are a dataset's pairs with chosen and rejected swapped (TIS-DPO's reverse
            DPO): the reference pass is shared with the runs on the dataset's orientation.

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
    plan = reference_plan(method, config, policy)
    kinds = set(reference_pass_kinds(method, plan))
    note = None
    hidden_bytes = cached_hidden_bytes(examples, hidden_size, num_layers)
    if "hidden" in kinds and hidden_bytes > MAX_CACHED_HIDDEN_BYTES:
        note = (f"per-layer hidden states of {hidden_bytes / 2**30:.1f} GiB exceed the cache limit of "
                f"{MAX_CACHED_HIDDEN_BYTES / 2**30:.0f} GiB")
    needs_reference_model = plan != "none" or "masks" in method.needs
    ref_dtype = parse_dtype(config.reference_dtype or ("bf16" if config.precision == "bf16" else "fp32"))
    reference = FrozenReference(policy, config.lora is not None, ref_dtype) if needs_reference_model else None
    if reference is not None and not reference.lora:
        reference.model.to(accelerator.device)
    policy.to(accelerator.device)
    method.to(accelerator.device)

    cache: dict[str, list] = {}
    key_parts = {"model": model_identity(resolved), "lora": config.lora is not None, "dtype": str(ref_dtype),
                 "data": [(e.prompt, e.responses) for e in examples]}
    along, mask_method = set(), method if "masks" in kinds else None
    if reference is not None and note is None:
        along, mask_method = kinds_along(share_with, config, policy, hidden_bytes, mask_method)
        along -= kinds

    def reference_cache(kinds: set[str], along: set[str] = frozenset()) -> dict[str, list]:
        masks = mask_method if "masks" in kinds | along else None
        return cached_reference_pass(key_parts, reference, examples, tokenizer.pad_token_id, kinds=frozenset(kinds),
                                     mask_method=masks, config=config, along=frozenset(along), swapped=swapped_pairs,
                                     device=accelerator.device, is_main=accelerator.is_main_process,
                                     exclusive=accelerator.num_processes == 1)

    pass_started = time.perf_counter()
    if note is None and kinds:
        try:
            try:
                cache = reference_cache(kinds, along)
            except SummaryUnavailable:
                if "summary" in kinds or "summary" not in along:
                    raise
                cache = reference_cache(kinds, along - {"summary"})  # only the others needed it
        except SummaryUnavailable as exc:
            note = str(exc)
    if note is not None:  # token-level needs from the reference at every step instead
        say(accelerator, f"[pobench] {method.name}: the reference runs at every step ({note})")
        plan = "online"
        cache = reference_cache({"masks"}) if "masks" in method.needs else {}
    reference_pass_s = time.perf_counter() - pass_started  # ~0 when every kind was in the cache
    position = {e.index: i for i, e in enumerate(examples)}
    if plan != "online" and reference is not None and not reference.lora:
        reference = None  # everything needed from it is cached: free its memory

    module = PreferenceModule(policy, method, reference, plan, config)

    def step_fn(prepared: nn.Module, batch: Batch) -> StepOutput:
        mask = window(batch.completion_mask, completion_window(batch))
        cached: dict[str, Tensor] = {}
        for key, per_example in cache.items():
            rows = [per_example[position[i]] for i in batch.indices]
            values = [r[0] for r in rows] + [r[1] for r in rows]
            if key in SUMMARY_KEYS:  # flat, in the row-major order of the completion logits' rows
                cached[key] = torch.cat(values).to(mask.device)
            else:
                cached[CACHED_FIELDS[key]] = scatter_completion(values, mask)
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
                            **({"reference_note": note} if note else {}), "reference_pass_s": reference_pass_s,
                            "parameters": parameters},
                     extra_modules=lambda unwrapped: list(unwrapped.method.modules()))
