"""TIS-DPO token-weight estimation: its own cached stage, run before TIS-DPO training.

Two estimators of the contrastive pair (pi_plus, pi_minus) whose token log-prob difference
scores each response token (``methods.tis_dpo.token_weights`` turns scores into weights):

* ``dpo_contrastive`` (the paper's main recipe): pi_plus = DPO on the pairs, pi_minus = DPO on the
  pairs with chosen and rejected swapped ("reverse DPO"), both from ``train.model``;
* ``prompt_contrastive``: one model (``train.model``) conditioned on a "good" vs a "bad" system
  prompt (or prefix, without a chat template).

The output is the input pairs plus ``weights_chosen`` / ``weights_rejected`` (one float per
response token under the training tokenisation of ``train``: use the same ``model``,
``max_length``, ``max_prompt_length`` and ``chat_template`` for the TIS-DPO run), written to
``<output_dir>/weighted_pairs.jsonl`` and reused when called again with the same inputs.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

import methods as method_registry
from methods.tis_dpo import token_weights
from bench.models import load_model
from bench.train.config import PreferenceTrainConfig, TrainConfigError, fingerprint
from bench.prompts import encode
from bench.store import atomic_write_json, atomic_write_jsonl
from bench.train.data import Tokenized, collate, tokenize_rows
from bench.train.preference import completion_forward, completion_window, flat_token_stats, train_preference, window

ESTIMATORS = ("dpo_contrastive", "prompt_contrastive")


@dataclass
class TISWeightConfig:
    """``train``: model, lengths and (for dpo_contrastive) the optimisation of both contrastive runs."""

    train: PreferenceTrainConfig = field(default_factory=PreferenceTrainConfig)
    estimator: str = "dpo_contrastive"
    beta: float = 0.1  # DPO beta of the contrastive runs
    transform: str = "rank"  # methods.tis_dpo.TRANSFORMS: rank | clip | exp
    transform_options: dict[str, Any] = field(default_factory=dict)
    good_system_prompt: str = "You are a helpful, harmless and honest assistant. Give the best possible answer."
    bad_system_prompt: str = "You are an unhelpful assistant. Give a poor, careless or harmful answer."
    score_batch_size: int = 8

    def validate(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise TrainConfigError(f"TIS weights: estimator={self.estimator!r} is not one of {ESTIMATORS}")
        if isinstance(self.train, dict):
            self.train = PreferenceTrainConfig.from_dict(self.train)
        self.train.validate()


@torch.no_grad()
def score_tokens(model, examples: Sequence[Tokenized], pad_id: int, batch_size: int,
                 precision: str = "fp32") -> list[list[torch.Tensor]]:
    """Token log-probs of every response token: per example, one 1-D tensor per response."""
    model.eval()
    out: list[list[torch.Tensor]] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        batch = collate(chunk, pad_id).to(model.device)
        start = completion_window(batch)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, _ = completion_forward(model, batch)
        mask = window(batch.completion_mask, start)
        logps = flat_token_stats(logits, None, window(batch.input_ids, start), mask).logps
        rows = [logps[i][mask[i] > 0].cpu() for i in range(mask.shape[0])]
        n = len(chunk)
        responses = len(chunk[0].responses)
        out.extend([rows[r * n + i] for r in range(responses)] for i in range(n))
    return out


def _weights(plus: list[list[torch.Tensor]], minus: list[list[torch.Tensor]], examples: Sequence[Tokenized],
             config: TISWeightConfig) -> list[tuple[list[float], list[float]]]:
    result = []
    for p, m, ex in zip(plus, minus, examples):
        per_side = []
        for side, rejected in ((0, False), (1, True)):
            n = len(ex.responses[side])
            eos = torch.zeros(1, n)
            if ex.eos_last and ex.eos_last[side]:
                eos[0, -1] = 1
            w = token_weights(p[side].unsqueeze(0).float(), m[side].unsqueeze(0).float(), torch.ones(1, n),
                              rejected=rejected, eos_mask=eos, transform=config.transform,
                              **config.transform_options)
            per_side.append([round(float(v), 6) for v in w[0]])
        result.append((per_side[0], per_side[1]))
    return result


def estimate_tis_weights(config: TISWeightConfig, pairs: Sequence[dict], output_dir: str | Path,
                         contrastive_models: tuple[str, str] | None = None) -> list[dict]:
    """Return ``pairs`` (usable rows only) with ``weights_chosen`` / ``weights_rejected`` added.

    ``contrastive_models``: (pi_plus, pi_minus) model directories already trained (the harness trains
    them as ordinary training runs, shared with a suite's own DPO run); None = train both here."""
    config.validate()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint("tis-weights", asdict(config), list(pairs), list(contrastive_models or ()))
    final = output_dir / "weighted_pairs.jsonl"
    meta_path = output_dir / "weights_meta.json"
    if final.exists() and meta_path.exists() and json.loads(meta_path.read_text()).get("fingerprint") == fp:
        return [json.loads(line) for line in final.read_text().splitlines() if line.strip()]

    train = config.train
    if config.estimator == "dpo_contrastive":
        if contrastive_models is None:
            dpo = method_registry.get("dpo", beta=config.beta)
            plus_run = train_preference(train, pairs, dpo, output_dir / "pi_plus")
            swapped = [{**row, "chosen": row.get("rejected"), "rejected": row.get("chosen")}
                       if isinstance(row, dict) else row for row in pairs]
            minus_run = train_preference(train, swapped, method_registry.get("dpo", beta=config.beta),
                                         output_dir / "pi_minus")
            contrastive_models = (plus_run.model_path, minus_run.model_path)
        plus_model, tokenizer = load_model(contrastive_models[0])
        examples, report = _training_tokens(pairs, tokenizer, train)
        plus = score_tokens(plus_model, examples, tokenizer.pad_token_id, config.score_batch_size, train.precision)
        del plus_model
        minus_model, _ = load_model(contrastive_models[1])
        minus = score_tokens(minus_model, examples, tokenizer.pad_token_id, config.score_batch_size,
                             train.precision)
        del minus_model
        details = {"pi_plus": str(contrastive_models[0]), "pi_minus": str(contrastive_models[1])}
    else:
        model, tokenizer = load_model(train.model)
        examples, report = _training_tokens(pairs, tokenizer, train)
        scored = []
        for system in (config.good_system_prompt, config.bad_system_prompt):
            conditioned = []
            for ex in examples:
                prompt_text = pairs[ex.index]["prompt"]
                # the training format with a system message / prefix; not truncated, so the
                # condition at the start of a long prompt is kept
                prompt_ids = encode(tokenizer, prompt_text, train.prompt_format(), system=system,
                                    truncate=False)
                conditioned.append(Tokenized(ex.index, prompt_ids, ex.responses, None, ex.eos_last))
            scored.append(score_tokens(model, conditioned, tokenizer.pad_token_id, config.score_batch_size,
                                       train.precision))
        plus, minus = scored
        details = {"good_system_prompt": config.good_system_prompt, "bad_system_prompt": config.bad_system_prompt}

    weighted = []
    for ex, (w_chosen, w_rejected) in zip(examples, _weights(plus, minus, examples, config)):
        weighted.append({**pairs[ex.index], "weights_chosen": w_chosen, "weights_rejected": w_rejected})
    atomic_write_jsonl(final, weighted)
    atomic_write_json(meta_path, {"fingerprint": fp, "estimator": config.estimator, "transform": config.transform,
                                  "data": report.to_dict(), **details})
    return weighted


def _training_tokens(pairs, tokenizer, train: PreferenceTrainConfig):
    return tokenize_rows(pairs, tokenizer, response_keys=("chosen", "rejected"), max_length=train.max_length,
                         prompt_format=train.prompt_format(), add_eos=train.add_eos, bad_rows=train.bad_rows,
                         prompt_overflow=train.prompt_overflow)
