"""Supervised fine-tuning on (prompt, completion) rows with the same model/checkpoint machinery.

Loss: mean negative log-likelihood over the completion tokens of each micro-batch (prompt tokens
are context only), the completion-only loss of TRL's SFTTrainer.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Sequence

from torch import nn

from bench.train.config import SFTConfig, fingerprint
from bench.train.data import Batch, resolve_chat_template, tokenize_rows
from bench.train.engine import (StepOutput, TrainResult, autocast, finished_result, make_accelerator, run_loop, say,
                                set_seed, write_json_atomic)
from bench.train.policy import load_policy, save_final
from bench.train.preference import (_NON_SEMANTIC, completion_forward, completion_window, flat_token_stats,
                                    prepare_run, window)


class SFTModule(nn.Module):
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
    config.validate()
    output_dir = Path(output_dir)
    semantic = {k: v for k, v in config.to_dict().items() if k not in _NON_SEMANTIC}
    fp = fingerprint("sft", semantic, list(rows))
    cached = finished_result(output_dir, fp, overwrite)
    if cached is not None:
        return cached
    t0 = time.time()
    accelerator = make_accelerator()
    prepare_run(output_dir, fp, overwrite, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    set_seed(config.seed)
    policy, tokenizer, resolved = load_policy(config)
    use_template = resolve_chat_template(tokenizer, config.chat_template)
    examples, report = tokenize_rows(
        rows, tokenizer, response_keys=("completion",), max_length=config.max_length,
        max_prompt_length=config.max_prompt_length, use_chat_template=use_template, add_eos=config.add_eos,
        bad_rows=config.bad_rows, prompt_overflow=config.prompt_overflow)
    if report.dropped:
        say(accelerator, f"[pobench] sft: {report.summary()}")
    policy.to(accelerator.device)
    module = SFTModule(policy, config)
    groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "weight_decay": config.weight_decay}]
    steps, last, resumed_from = run_loop(
        accelerator=accelerator, config=config, output_dir=output_dir, module=module, param_groups=groups,
        examples=examples, pad_id=tokenizer.pad_token_id, step_fn=lambda m, b: m(b), run_name="sft")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(module)
        model_path = save_final(unwrapped.policy, tokenizer, [], output_dir, config.lora is not None, config)
        result = TrainResult(
            output_dir=str(output_dir), model_path=str(model_path), steps=steps,
            final_loss=float(last.get("loss", float("nan"))), metrics=last, data=report.to_dict(),
            runtime_s=time.time() - t0, resumed_from_step=resumed_from, fingerprint=fp,
            extra={"kind": "sft", "model_source": resolved.source, "num_processes": accelerator.num_processes,
                   "chat_template": use_template, "config": config.to_dict()})
        write_json_atomic(output_dir / "result.json", result.to_dict())
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    accelerator.wait_for_everyone()
    return TrainResult.load(output_dir / "result.json")
