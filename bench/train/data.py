"""Row validation, tokenisation with truncation rules, and padded batches.

Truncation (the same rules as TRL's DPO data collator, stated here so they can be checked):
the prompt is encoded by :func:`bench.prompts.encode`, the encoder sampling and KL use too (chat
template, special tokens; it keeps its LAST ``max_prompt_length`` tokens: the end of a prompt is
what the response continues); each response is then cut so that prompt + response <=
``max_length``. An EOS token is appended to every response (``add_eos``) before the cut. Rows that
cannot be trained on are never trained on silently: they are dropped with a counted reason (or
raise, ``bad_rows="error"``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from bench.prompts import PromptFormat, encode


class BadDataError(ValueError):
    """Data rows cannot be used; the message gives counts and reasons."""


@dataclass
class DataReport:
    """What happened to the input rows: kept count, dropped counts per reason, truncations."""

    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> first row indices
    truncated_prompts: int = 0
    truncated_responses: int = 0

    def drop(self, reason: str, index: int) -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(index)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "kept": self.kept, "dropped": dict(self.dropped),
                "dropped_examples": self.examples, "truncated_prompts": self.truncated_prompts,
                "truncated_responses": self.truncated_responses}

    def summary(self) -> str:
        if not self.dropped:
            return f"{self.kept}/{self.total} rows kept"
        reasons = ", ".join(f"{n} {r} (rows {self.examples[r]}...)" for r, n in self.dropped.items())
        return f"{self.kept}/{self.total} rows kept; dropped: {reasons}"


@dataclass
class Tokenized:
    """One example: prompt token ids and one or two response token id lists."""

    index: int  # row index in the caller's list
    prompt: list[int]
    responses: list[list[int]]  # [chosen, rejected] or [completion]
    weights: list[list[float]] | None = None  # per response token (TIS-DPO)
    eos_last: list[bool] = field(default_factory=list)  # response ends with the appended EOS


def _text(row: dict, key: str) -> str | None:
    value = row.get(key) if isinstance(row, dict) else None
    return value if isinstance(value, str) else None


def tokenize_rows(rows: Sequence[dict], tokenizer, *, response_keys: Sequence[str], max_length: int,
                  prompt_format: PromptFormat, add_eos: bool = True,
                  bad_rows: str = "drop", weight_keys: Sequence[str] | None = None,
                  system: str | None = None, prompt_overflow: str = "truncate") -> tuple[list[Tokenized], DataReport]:
    """Validate and tokenise rows (``prompt`` + ``response_keys``); see the module docstring.

    ``prompt_format`` (chat template, ``max_prompt_length``) is the one sampling and KL are given
    too (``TrainConfig.prompt_format()``).

    Drop reasons: ``missing_field:<key>`` (absent or not a string), ``empty_response:<key>``,
    ``chosen_equals_rejected``, ``prompt_too_long`` (prompt longer than ``max_prompt_length`` when
    ``prompt_overflow="drop"``; with the default "truncate" its end is kept and the row counted in
    ``truncated_prompts``), ``identical_after_truncation``,
    ``weights_length_mismatch:<key>``.
    """
    report = DataReport(total=len(rows))
    out: list[Tokenized] = []
    eos = tokenizer.eos_token_id
    for index, row in enumerate(rows):
        prompt = _text(row, "prompt")
        responses = [_text(row, key) for key in response_keys]
        missing = [k for k, v in zip(("prompt", *response_keys), (prompt, *responses)) if v is None]
        if missing:
            report.drop(f"missing_field:{missing[0]}", index)
            continue
        empty = [k for k, v in zip(response_keys, responses) if not v.strip()]
        if empty:
            report.drop(f"empty_response:{empty[0]}", index)
            continue
        if len(responses) == 2 and responses[0].strip() == responses[1].strip():
            report.drop("chosen_equals_rejected", index)
            continue
        prompt_ids = encode(tokenizer, prompt, prompt_format, system=system, truncate=False)
        limit = prompt_format.max_prompt_length
        if limit is not None and len(prompt_ids) > limit:
            if prompt_overflow == "drop" or limit >= max_length:
                report.drop("prompt_too_long", index)
                continue
            prompt_ids = prompt_format.truncate(prompt_ids)
            report.truncated_prompts += 1
        room = max_length - len(prompt_ids)
        ids, eos_last = [], []
        for text in responses:
            tokens = tokenizer(text, add_special_tokens=False).input_ids + ([eos] if add_eos else [])
            if len(tokens) > room:
                tokens = tokens[:room]
                report.truncated_responses += 1
            ids.append(tokens)
            eos_last.append(add_eos and len(tokens) > 0 and tokens[-1] == eos)
        if len(ids) == 2 and ids[0] == ids[1]:
            report.drop("identical_after_truncation", index)
            continue
        weights = None
        if weight_keys and all(k in row for k in weight_keys):
            weights = []
            for key, tokens in zip(weight_keys, ids):
                values = [float(v) for v in row[key]]
                if len(values) < len(tokens):
                    weights = None
                    break
                weights.append(values[:len(tokens)])
            if weights is None:
                report.drop(f"weights_length_mismatch:{weight_keys[0]}", index)
                continue
        elif weight_keys:
            report.drop(f"missing_field:{weight_keys[0]}", index)
            continue
        out.append(Tokenized(index, prompt_ids, ids, weights, eos_last))
    report.kept = len(out)
    if report.dropped and bad_rows == "error":
        raise BadDataError(f"bad data rows (bad_rows='error'): {report.summary()}")
    if not out:
        raise BadDataError(f"no usable data rows: {report.summary()}")
    return out, report


@dataclass
class Batch:
    """Padded sequences; ``completion_mask`` marks response tokens (unshifted positions).

    For preference data the first half of the rows are the chosen responses and the second
    half the rejected ones (one concatenated forward pass per step).
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    indices: list[int]  # row indices of the examples (one per pair / SFT row)
    weights: Tensor | None = None  # [rows, T] token weights aligned like completion_mask
    eos_mask: Tensor | None = None  # [rows, T] 1 at an appended EOS

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.completion_mask),
                     self.indices, move(self.weights), move(self.eos_mask))


def collate(examples: Sequence[Tokenized], pad_id: int, pad_to_multiple_of: int = 1) -> Batch:
    """Right-padded [R*B, T] batch: all examples' response 0, then all examples' response 1, ..."""
    n_resp = len(examples[0].responses)
    seqs, comp, weights, eos_flags = [], [], [], []
    for r in range(n_resp):
        for ex in examples:
            seqs.append(ex.prompt + ex.responses[r])
            comp.append(len(ex.responses[r]))
            weights.append(ex.weights[r] if ex.weights is not None else None)
            eos_flags.append(ex.eos_last[r] if ex.eos_last else False)
    width = max(len(s) for s in seqs)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    rows = len(seqs)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros(rows, width, dtype=torch.long)
    completion = torch.zeros(rows, width)
    has_weights = all(w is not None for w in weights)
    weight_t = torch.zeros(rows, width) if has_weights else None
    eos_mask = torch.zeros(rows, width)
    for i, (seq, n) in enumerate(zip(seqs, comp)):
        input_ids[i, :len(seq)] = torch.tensor(seq)
        attention[i, :len(seq)] = 1
        completion[i, len(seq) - n:len(seq)] = 1
        if has_weights:
            weight_t[i, len(seq) - n:len(seq)] = torch.tensor(weights[i], dtype=torch.float32)
        if eos_flags[i]:
            eos_mask[i, len(seq) - 1] = 1
    return Batch(input_ids, attention, completion, [ex.index for ex in examples], weight_t, eos_mask)
