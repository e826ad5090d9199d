"""Policy / reference construction and the final save, shared by every trainer."""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from bench.models import load_model, resolve_model
from bench.train.config import TrainConfig


def load_policy(config: TrainConfig):
    """(policy, tokenizer, source) with LoRA adapters attached when ``config.lora`` is set."""
    resolved = resolve_model(config.model)
    policy, tokenizer = load_model(resolved.path, dtype=torch.float32)
    policy.config.use_cache = False
    if config.lora is not None:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:  # pragma: no cover - peft is a dependency
            raise ImportError("LoRA training needs the peft package: pip install peft") from None
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=list(config.lora.target_modules), task_type="CAUSAL_LM")
        policy = get_peft_model(policy, lora)
    return policy, tokenizer, resolved


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
               lora: bool) -> Path:
    """Write ``<output_dir>/model`` atomically: full safetensors weights (LoRA merged) + tokenizer,
    and ``method_modules.pt`` with the method's trainable extras (SparsePO mask heads)."""
    final = output_dir / "model"
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=output_dir))
    try:
        to_save = policy
        if lora:
            to_save = copy.deepcopy(policy).merge_and_unload()
        to_save.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra_modules:
            torch.save([m.state_dict() for m in extra_modules], tmp / "method_modules.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_manifest(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
