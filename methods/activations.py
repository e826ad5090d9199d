"""Forward hooks that record a model's activations by type (MLP, attention projections, residual
stream, logits): the reference activations SparsePO-MaPO's token masks are computed from
(``methods.sparsepo_mapo.activation_masks``), recorded by the trainer's reference pass."""
from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Iterator

from torch import Tensor, nn

from methods.base import MethodError

# Hook points by activation type: a module whose qualified name matches the pattern contributes its
# output to that type. The names cover Llama/Mistral/Qwen/GPT-NeoX/GPT-2 style decoders in transformers.
HOOK_PATTERNS: dict[str, str] = {
    "mlp": r"\.(mlp)$",
    "attn_q": r"\.(q_proj)$",
    "attn_k": r"\.(k_proj)$",
    "attn_v": r"\.(v_proj)$",
    "attn_out": r"\.(o_proj|dense|c_proj)$",
    "residual": r"\.layers\.\d+$|\.h\.\d+$",
    "logits": r"^lm_head$|^embed_out$",
}


@contextlib.contextmanager
def record_activations(model: nn.Module, patterns: dict[str, str] | None = None
                       ) -> Iterator[dict[str, list[Tensor]]]:
    """Collect the outputs of matching modules during the forward passes inside the block.

    Yields ``{type: [Tensor[B, T, d], ...]}`` (one entry per hooked module, in call order).
    Attention ``dense``/``c_proj`` inside an MLP are excluded by requiring an attention parent.
    """
    patterns = patterns or HOOK_PATTERNS
    recorded: dict[str, list[Tensor]] = defaultdict(list)
    handles = []
    for qualified_name, module in model.named_modules():
        for kind, pattern in patterns.items():
            if not re.search(pattern, qualified_name):
                continue
            if kind == "attn_out" and not re.search(r"attn|attention", qualified_name):
                continue

            def hook(_module, _inputs, output, kind=kind):
                tensor = output[0] if isinstance(output, tuple) else output
                recorded[kind].append(tensor.detach())

            handles.append(module.register_forward_hook(hook))
    if not handles:
        raise MethodError("SparsePO activation masks: no module of the model matched the hook patterns "
                          f"{sorted(patterns)}; pass explicit patterns for this architecture")
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
