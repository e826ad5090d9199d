"""Policy / reference construction and the final save, shared by every trainer."""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from bench.models import load_model, resolve_model
from bench.train.config import TrainConfig


def load_policy(config: TrainConfig):
    """(policy, tokenizer, source) with LoRA adapters attached when ``config.lora`` is set.

    LoRA + bf16: the frozen base weights are loaded in bf16 (no fp32 master copy is needed for
    weights that never change, and autocast then has nothing to cast); peft keeps the adapters in
    fp32. :func:`save_final` merges them into the fp32 base."""
    resolved = resolve_model(config.model)
    base_dtype = torch.bfloat16 if (config.lora is not None and config.precision == "bf16") else torch.float32
    policy, tokenizer = load_model(resolved.path, dtype=base_dtype)
    policy.config.use_cache = False
    if config.attn_implementation:
        policy.set_attn_implementation(config.attn_implementation)
    if config.lora is not None:
        policy = get_peft_model(policy, lora_config(config))
    return policy, tokenizer, resolved


def lora_config(config: TrainConfig):
    try:
        from peft import LoraConfig
    except ImportError:  # pragma: no cover - peft is a dependency
        raise ImportError("LoRA training needs the peft package: pip install peft") from None
    return LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=list(config.lora.target_modules), task_type="CAUSAL_LM")


def get_peft_model(model: nn.Module, lora):
    from peft import get_peft_model as attach

    return attach(model, lora)


class FrozenReference:
    """The reference model: a frozen copy of the initial policy, or - with LoRA - the policy
    itself with its adapters disabled (no second copy of the weights)."""

    def __init__(self, policy: nn.Module, lora: bool, dtype: torch.dtype | None = None) -> None:
        self.lora = lora
        if lora:
            self.model = policy
        else:
            self.model = copy.deepcopy(policy)
            self.model.requires_grad_(False)
            self.model.eval()
            if dtype is not None:  # a frozen model needs no fp32 master weights
                self.model.to(dtype)

    def context(self):
        return self.model.disable_adapter() if self.lora else _nullcontext()

    def __call__(self, *args, **kwargs):
        # the LoRA policy may be wrapped by DDP later; its base weights are what we call here
        with torch.no_grad(), self.context():
            was_training = self.model.training
            self.model.eval()
            try:
                return self.model(*args, **kwargs)
            finally:
                self.model.train(was_training)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def model_shape(policy: nn.Module) -> tuple[int, int]:
    config = policy.config
    return int(config.hidden_size), int(config.num_hidden_layers)


def save_final(policy: nn.Module, tokenizer, extra_modules: list[nn.Module], output_dir: Path,
               lora: bool, config: TrainConfig | None = None, name: str = "model") -> Path:
    """Write ``<output_dir>/<name>`` (default ``model``) atomically: full safetensors weights (LoRA merged) + tokenizer,
    and ``method_modules.pt`` with the method's trainable extras (SparsePO mask heads).

    A LoRA policy trained over a bf16 base is merged into the fp32 base weights: merging a small
    adapter delta into bf16 weights would round most of it away, and the saved policy would also
    differ from the fp32 reference by the base's own rounding."""
    final = output_dir / name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        to_save = policy
        if lora:
            to_save = merged_fp32(policy, config)
        to_save.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra_modules:
            torch.save([m.state_dict() for m in extra_modules], tmp / "method_modules.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def merged_fp32(policy: nn.Module, config: TrainConfig | None) -> nn.Module:
    """The LoRA policy with its adapters merged into float32 base weights."""
    base_is_fp32 = all(p.dtype == torch.float32 for p in policy.base_model.model.parameters())
    if base_is_fp32 or config is None:
        return copy.deepcopy(policy).merge_and_unload().float()
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    base, _ = load_model(resolve_model(config.model).path, dtype=torch.float32)
    fresh = get_peft_model(base, lora_config(config))
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(policy))
    return fresh.merge_and_unload()
