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

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def __call__(self, *args, **kwargs):
        # the LoRA policy may be wrapped by DDP later; its base weights are what we call here
        with torch.no_grad(), self.context():
            was_training = self.model.training
            self.model.eval()
            try:
                return self.model(*args, **kwargs)
            finally:
                self.model.train(was_training)


class PolicyModule(nn.Module):
    """Base of the modules a trainer hands to ``accelerator.prepare`` (``self.policy`` + method modules).

    accelerate's FSDP preparation asks the prepared module what only the policy knows: the transformer
    block classes to shard one by one (``_no_split_modules``, for ``TRANSFORMER_BASED_WRAP``), the
    embeddings (their own FSDP unit) and ``tie_weights``, which re-ties the input and output embeddings
    after it loads the weights into the sharded model (``fsdp_cpu_ram_efficient_loading``). Without it a
    tied ``lm_head`` silently became a separate parameter that no optimizer trains."""

    policy: nn.Module

    @property
    def _no_split_modules(self):
        return getattr(self.policy, "_no_split_modules", None)

    def get_input_embeddings(self):
        return self.policy.get_input_embeddings()

    def get_output_embeddings(self):
        return self.policy.get_output_embeddings()

    def tie_weights(self, *args, **kwargs):
        tie = getattr(self.policy, "tie_weights", None)
        if tie is not None:
            tie(*args, **kwargs)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def model_shape(policy: nn.Module) -> tuple[int, int]:
    config = policy.config
    return int(config.hidden_size), int(config.num_hidden_layers)


def full_states(accelerator, module: nn.Module, parts: list[nn.Module]) -> list[dict[str, torch.Tensor]] | None:
    """Under FSDP the parameters of the prepared ``module`` are shards (DTensors) that no process can save as
    they are: gather its full state dict onto the main process (CPU) and split it into the state dicts of
    ``parts`` (submodules of the unwrapped module), keyed as each part's own ``state_dict()`` would be.

    A collective under FSDP: every process must call it. Returns None on the other processes, and
    everywhere without FSDP (DDP or one process: the unwrapped parts hold whole tensors)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return None
    full = accelerator.get_state_dict(module)  # FSDP2: full_state_dict + cpu_offload, on the main process only
    if not accelerator.is_main_process:
        return None
    unwrapped = accelerator.unwrap_model(module)
    seen: dict[int, str] = {}
    for key, value in unwrapped.state_dict(keep_vars=True).items():
        if key in full:  # tied weights (embeddings / lm_head) stay one tensor, saved once as without FSDP
            full[key] = full[seen.setdefault(id(value), key)]
    names = {id(m): name for name, m in unwrapped.named_modules()}
    states = []
    for part in parts:
        prefix = names[id(part)] + "."
        states.append({key[len(prefix):]: value for key, value in full.items() if key.startswith(prefix)})
    return states


def save_final(policy: nn.Module, tokenizer, extra_modules: list[nn.Module], output_dir: Path,
               lora: bool, config: TrainConfig | None = None, name: str = "model",
               states: list[dict[str, torch.Tensor]] | None = None) -> Path:
    """Write ``<output_dir>/<name>`` (default ``model``) atomically: the weights (full safetensors; with LoRA
    the PEFT adapter, which :func:`bench.models.load_model` merges into its base) + tokenizer, and
    ``method_modules.pt`` with the method's trainable extras (SparsePO mask heads).

    ``states``: the full state dicts of ``[policy, *extra_modules]`` when the modules themselves hold
    shards (FSDP, from :func:`full_states`); their tensors are saved instead of the modules' own.

    Why adapters, not merged weights (as before 2026-12): writing 2 x 538 MB per SmolLM2 run, and
    checksumming them again at every stage that reads the policy, was ~1/5 of a default-suite
    training stage. A policy trained over a bf16 base is merged into the fp32 base when loaded."""
    final = output_dir / name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        policy_state, extra_states = (states[0], states[1:]) if states is not None else (None, None)
        if lora:  # the adapters only: loaders merge them into the float32 base (bench.models.load_causal_lm)
            if config is not None:  # the reference it was trained from, which may itself be an adapter
                for adapter in policy.peft_config.values():
                    adapter.base_model_name_or_path = resolve_model(config.model).path
            policy.save_pretrained(tmp, safe_serialization=True, state_dict=policy_state)
        else:
            policy.save_pretrained(tmp, safe_serialization=True, state_dict=policy_state)
        tokenizer.save_pretrained(tmp)
        if extra_modules:
            torch.save(extra_states if extra_states is not None else [m.state_dict() for m in extra_modules],
                       tmp / "method_modules.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
