"""pobench training engine: SFT and preference training of every registered method.

Public API (the harness calls these; each is idempotent on its ``output_dir``)::

    from bench.train import PreferenceTrainConfig, SFTConfig, LoraSettings, train_preference, train_sft
    result = train_preference(PreferenceTrainConfig(model="smollm2-135m", steps=20, lr=5e-4,
                                                    lora=LoraSettings(r=16)),
                              pairs=[{"prompt": ..., "chosen": ..., "rejected": ...}, ...],
                              method=methods.get("dpo", beta=0.1), output_dir="work/train/<hash>")
    result.model_path      # safetensors dir -> bench.models.load_model(result.model_path)
    result.final_loss, result.metrics, result.data  # last step's metrics, dropped-row report

    sft = train_sft(SFTConfig(...), rows=[{"prompt": ..., "completion": ...}], output_dir=...)

    weighted_pairs = estimate_tis_weights(TISWeightConfig(...), pairs, output_dir)  # TIS-DPO stage

See docs/training.md for details (truncation rules, reference caching, checkpoints, multi-GPU).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the submodule defining it. Imported on first use (PEP 562): the suite schema
#: (``bench.train.config``) is read by every command, torch only by the commands that train
_EXPORTS = {
    "LoraSettings": "config", "PreferenceTrainConfig": "config", "SFTConfig": "config", "TrainConfig": "config",
    "TrainConfigError": "config",
    "BadDataError": "data", "DataReport": "data",
    "NonFiniteLossError": "engine", "TrainResult": "engine",
    "train_preference": "preference",
    "train_sft": "sft",
    "TISWeightConfig": "tis", "estimate_tis_weights": "tis",
}
__all__ = ["LoraSettings", "PreferenceTrainConfig", "SFTConfig", "TrainConfig", "TrainConfigError",
           "BadDataError", "DataReport", "NonFiniteLossError", "TrainResult", "train_preference", "train_sft",
           "TISWeightConfig", "estimate_tis_weights"]

if TYPE_CHECKING:
    from bench.train.config import LoraSettings, PreferenceTrainConfig, SFTConfig, TrainConfig, TrainConfigError
    from bench.train.data import BadDataError, DataReport
    from bench.train.engine import NonFiniteLossError, TrainResult
    from bench.train.preference import train_preference
    from bench.train.sft import train_sft
    from bench.train.tis import TISWeightConfig, estimate_tis_weights


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
