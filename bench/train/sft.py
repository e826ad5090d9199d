"""Supervised fine-tuning on (prompt, completion) rows with the same model/checkpoint machinery.

Loss: mean negative log-likelihood over the completion tokens of each micro-batch (prompt tokens
are context only), the completion-only loss of TRL's SFTTrainer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import nn

from bench.train.config import SFTConfig
from bench.train.data import Batch, tokenize_rows
from bench.train.engine import StepOutput, TrainResult, autocast, close_run, open_run, run_loop, say
from bench.train.policy import PolicyModule
from bench.train.preference import completion_forward, completion_window, flat_token_stats, window


class SFTModule(PolicyModule):
    def __init__(self, policy: nn.Module, config: SFTConfig) -> None:
        super().__init__()
        self.policy = policy
        self.config = config

    def forward(self, batch: Batch) -> StepOutput:
        start = completion_window(batch)
        with autocast(self.config, batch.input_ids.device):
            logits, _ = completion_forward(self.policy, batch)
        mask = window(batch.completion_mask, start)
        logps = flat_token_stats(logits, None, window(batch.input_ids, start), mask).logps
        tokens = mask.sum()
        nll = -(logps * mask).sum() / tokens
        return StepOutput(nll, {"completion_tokens": tokens.detach()})


def train_sft(config: SFTConfig, rows: Sequence[dict], output_dir: str | Path, *,
              overwrite: bool = False) -> TrainResult:
    """Fine-tune ``config.model`` on ``rows`` (dicts with ``prompt`` and ``completion`` strings).

    Same outputs, caching and resume behaviour as :func:`bench.train.train_preference`;
    ``result.model_path`` is the SFT model, typically the reference of later preference runs.
    """
    output_dir = Path(output_dir)
    run = open_run("sft", config, output_dir, (list(rows),), overwrite)
    if isinstance(run, TrainResult):
        return run  # finished earlier with the same config and data
    accelerator, policy, tokenizer = run.accelerator, run.policy, run.tokenizer
    examples, report = tokenize_rows(
        rows, tokenizer, response_keys=("completion",), max_length=config.max_length,
        prompt_format=config.prompt_format(), add_eos=config.add_eos,
        bad_rows=config.bad_rows, prompt_overflow=config.prompt_overflow)
    if report.dropped:
        say(accelerator, f"[pobench] sft: {report.summary()}")
    policy.to(accelerator.device)
    module = SFTModule(policy, config)
    groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "weight_decay": config.weight_decay}]
    steps, last, resumed_from = run_loop(
        accelerator=accelerator, config=config, output_dir=output_dir, module=module, param_groups=groups,
        examples=examples, pad_id=tokenizer.pad_token_id, step_fn=lambda m, b: m(b), run_name="sft")
    return close_run(run, config, module, steps=steps, last=last, resumed_from=resumed_from,
                     data_report=report.to_dict(), extra={"kind": "sft"})
