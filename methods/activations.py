"""Forward hooks that record a model's activations by type: the reference activations SparsePO-MaPO's
token masks are computed from (``methods.sparsepo_mapo.activation_masks``), recorded by the trainer's
reference pass.

Two layouts of hook points (each a :class:`HookPoint`: the activation type it counts towards, a regex
on the module's qualified name, and whether the module's output or input is read):

* :data:`SEVEN_HOOK_TYPES` (pobench's first reading, the default): the outputs of the MLP block, of the
  q, k, v and output projections of attention, of every decoder layer (residual stream) and of the
  output layer, as seven types of equal weight.
* :data:`OFFICIAL_FOUR_TYPES` (the official SparsePO code): four types of equal weight, MLP
  post-activation (the input of the MLP's down projection), attention (q, k, v projections, q and k
  after the rotary embedding, and the value output: the input of the output projection), the residual
  stream (each layer's input, the point between attention and MLP, each layer's output) and the logits.

The names cover Llama/Mistral/Qwen (separate q/k/v, rotary) and GPT-2/GPT-NeoX/GPT-J/Phi style
decoders in transformers; fused q/k/v projections (GPT-2's ``c_attn``, NeoX's ``query_key_value``) give
no separate q/k/v points.
"""
from __future__ import annotations

import contextlib
import re
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from methods.base import MethodError


@dataclass(frozen=True)
class HookPoint:
    """Modules whose qualified name matches ``pattern`` (and, when given, ``within``) contribute their
    ``read`` ("output" or "input": the first positional argument or ``hidden_states``) to ``kind``."""

    kind: str
    pattern: str
    read: str = "output"
    within: str | None = None


ATTENTION = r"attn|attention"
# kind -> pattern on module outputs (the seven types; kept by name for callers that pass patterns)
HOOK_PATTERNS: dict[str, str] = {
    "mlp": r"\.(mlp)$",
    "attn_q": r"\.(q_proj)$",
    "attn_k": r"\.(k_proj)$",
    "attn_v": r"\.(v_proj)$",
    "attn_out": r"\.(o_proj|dense|c_proj)$",
    "residual": r"\.layers\.\d+$|\.h\.\d+$",
    "logits": r"^lm_head$|^embed_out$",
}
SEVEN_HOOK_TYPES: tuple[HookPoint, ...] = tuple(
    HookPoint(kind, pattern, within=ATTENTION if kind == "attn_out" else None)
    for kind, pattern in HOOK_PATTERNS.items())
#: rotary q/k are not module outputs: :func:`record_activations` captures them from the model's
#: ``apply_rotary_pos_emb`` when a hook point of this pattern is asked for
ROTARY = "<apply_rotary_pos_emb>"
LAYER = r"\.layers\.\d+$|\.h\.\d+$"
OFFICIAL_FOUR_TYPES: tuple[HookPoint, ...] = (
    HookPoint("mlp_post", r"\.mlp\.(down_proj|c_proj|dense_4h_to_h|fc_out|fc2)$", read="input"),
    HookPoint("attention", r"\.(q_proj|k_proj|v_proj)$"),
    HookPoint("attention", ROTARY),
    HookPoint("attention", r"\.(o_proj|out_proj|dense|c_proj)$", read="input", within=ATTENTION),
    HookPoint("residual", LAYER, read="input"),
    HookPoint("residual", r"\.(post_attention_layernorm|ln_2)$", read="input"),
    HookPoint("residual", LAYER),
    HookPoint("logits", r"^lm_head$|^embed_out$"),
)
ACTIVATION_LAYOUTS = {"seven_hook_types": SEVEN_HOOK_TYPES, "official_four_types": OFFICIAL_FOUR_TYPES}


def _as_points(points: Sequence[HookPoint] | dict[str, str] | None) -> tuple[HookPoint, ...]:
    if points is None:
        return SEVEN_HOOK_TYPES
    if isinstance(points, dict):  # {kind: pattern on outputs}
        return tuple(HookPoint(kind, pattern, within=ATTENTION if kind == "attn_out" else None)
                     for kind, pattern in points.items())
    return tuple(points)


def _first_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def _rotary_capture(model: nn.Module, record) -> Iterator[bool]:
    """Wrap ``apply_rotary_pos_emb`` of the modules that define the model's attention layers, so each
    call records the rotated q and k as ``[B, T, heads * head_dim]``; yields whether any was found."""
    modules = {sys.modules[type(m).__module__] for _, m in model.named_modules()
               if re.search(ATTENTION, type(m).__name__, re.I) and type(m).__module__ in sys.modules}
    patched = [m for m in modules if callable(getattr(m, "apply_rotary_pos_emb", None))]
    originals = {m: m.apply_rotary_pos_emb for m in patched}

    def wrap(original):
        def apply_rotary_pos_emb(q, k, *args, **kwargs):
            q_rot, k_rot = original(q, k, *args, **kwargs)
            for t in (q_rot, k_rot):  # [B, heads, T, head_dim] -> [B, T, heads * head_dim]
                record(t.transpose(1, 2).flatten(2))
            return q_rot, k_rot
        return apply_rotary_pos_emb

    for m in patched:
        m.apply_rotary_pos_emb = wrap(originals[m])
    try:
        yield bool(patched)
    finally:
        for m, original in originals.items():
            m.apply_rotary_pos_emb = original


@contextlib.contextmanager
def record_activations(model: nn.Module, points: Sequence[HookPoint] | dict[str, str] | None = None
                       ) -> Iterator[dict[str, list[Tensor]]]:
    """Collect the activations of the hook ``points`` (default :data:`SEVEN_HOOK_TYPES`; a dict is
    ``{kind: pattern}`` on module outputs) during the forward passes inside the block.

    Yields ``{kind: [Tensor[B, T, d], ...]}`` (one entry per hooked module and call, in call order).
    """
    points = _as_points(points)
    recorded: dict[str, list[Tensor]] = defaultdict(list)
    handles = []
    for qualified_name, module in model.named_modules():
        for point in points:
            if point.pattern == ROTARY or not re.search(point.pattern, qualified_name):
                continue
            if point.within is not None and not re.search(point.within, qualified_name):
                continue
            if point.read == "input":
                def pre_hook(_module, args, kwargs, kind=point.kind):
                    recorded[kind].append(_first_input(args, kwargs).detach())

                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                def hook(_module, _inputs, output, kind=point.kind):
                    tensor = output[0] if isinstance(output, tuple) else output
                    recorded[kind].append(tensor.detach())

                handles.append(module.register_forward_hook(hook))
    rotary_kinds = [p.kind for p in points if p.pattern == ROTARY]
    rotary = (_rotary_capture(model, lambda t: [recorded[k].append(t.detach()) for k in rotary_kinds])
              if rotary_kinds else contextlib.nullcontext(False))
    if not handles:
        raise MethodError("SparsePO activation masks: no module of the model matched the hook points "
                          f"{sorted({p.kind for p in points})}; pass explicit points for this architecture")
    try:
        with rotary:
            yield recorded
    finally:
        for handle in handles:
            handle.remove()
