"""Sequence log-probs by teacher forcing, for KL(pi || ref) on samples and held-out pair margins.

Independent of the generation backend by design: the sampled text is re-tokenised as
``prompt_ids + completion_ids`` (the same split the trainer uses; the prompt through
:func:`bench.prompts.encode` with the run's ``prompt_format``) and scored under both models
(float32 by default; ``score.kl_dtype: bfloat16`` trades precision for speed, the log-softmax stays
float32), so hf, vLLM and server samples are measured the same way.
KL per sequence = sum over completion tokens of log pi(y_t|.) - log ref(y_t|.), the Monte-Carlo
estimate of KL(pi||ref) for samples drawn from pi at temperature 1.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch

from bench.backends.hf import load_for_inference
from bench.models import kept_logits, left_padded, parse_dtype
from bench.prompts import PromptFormat, encode


def _encode(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
            prompt_format: PromptFormat | None = None) -> list[tuple[list[int], int]]:
    rows = []
    for prompt, completion in zip(prompts, completions):
        p = encode(tokenizer, prompt, prompt_format)
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] if completion else []
        rows.append((p + c, len(p)))
    return rows


#: Most completion positions whose vocabulary-sized logits exist at once (and most tokens, prompt
#: included, per forward): 4096 x 49k fp32 logits are 0.8 GB, twice that with logsumexp's temporary,
#: so a scoring pass stays well under 4 GB however many and however long the sequences are.
MAX_KEPT_TOKENS = 4096
MAX_BATCH_TOKENS = 16384


def token_budget_batches(lengths: Sequence[tuple[int, int]], batch_size: int, max_kept: int | None = None,
                         max_tokens: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` (``(sequence length, completion length)`` per row) in batches, longest
    first: at most ``batch_size`` rows, ``max_kept`` completion tokens and ``max_tokens`` padded tokens
    per batch (a single row larger than a budget goes alone). Short-completion workloads keep their
    ``batch_size`` batches unchanged, so budgets only split what would not fit in memory."""
    max_kept = MAX_KEPT_TOKENS if max_kept is None else max_kept
    max_tokens = MAX_BATCH_TOKENS if max_tokens is None else max_tokens
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i][0])
    batches: list[list[int]] = []
    current: list[int] = []
    kept = 0
    for i in order:
        width = lengths[current[0]][0] if current else lengths[i][0]  # longest first: the first row is the widest
        if current and (len(current) >= batch_size or kept + lengths[i][1] > max_kept
                        or (len(current) + 1) * width > max_tokens):
            batches.append(current)
            current, kept = [], 0
        current.append(i)
        kept += lengths[i][1]
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def completion_logps(model: Any, rows: Sequence[tuple[list[int], int]], pad_id: int, batch_size: int = 32
                     ) -> list[list[float]]:
    """Per-token log-probs of each row's completion part (tokens after ``prompt_len``).

    Only the positions that predict completion tokens reach the output layer (boolean
    ``logits_to_keep``), and log p = logit - logsumexp is taken in float32 without materialising a
    full log-softmax: with a 49k vocabulary the output layer and the softmax over it, not the
    transformer, dominate this pass on CPU. Batches are cut by :func:`token_budget_batches`, so the
    peak memory is bounded by the budgets, not by the number or length of the sequences."""
    out: list[list[float]] = [[] for _ in rows]
    device = next(model.parameters()).device
    lengths = [(len(seq), max(len(seq) - prompt_len, 0)) for seq, prompt_len in rows]
    for batch in token_budget_batches(lengths, batch_size):
        idx = [i for i in batch if lengths[i][1] > 0]
        if not idx:
            continue
        width = max(len(rows[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        keep = torch.zeros((len(idx), width), dtype=torch.bool)
        targets = []
        for j, i in enumerate(idx):
            seq, prompt_len = rows[i]
            ids[j, :len(seq)] = torch.tensor(seq)
            attn[j, :len(seq)] = 1
            # position t predicts token t+1: completion tokens are predicted from prompt_len-1 .. len-2
            keep[j, prompt_len - 1:len(seq) - 1] = True
            targets.extend(seq[prompt_len:])
        logits, _ = kept_logits(model, ids.to(device), attn.to(device), keep.to(device))
        target = torch.tensor(targets, device=logits.device)
        token = logits.gather(-1, target[:, None]).squeeze(-1).float()
        logps = (token - torch.logsumexp(logits.float(), dim=-1)).tolist()
        offset = 0
        for i in idx:  # kept positions come out in row-major order, i.e. row by row
            n = len(rows[i][0]) - rows[i][1]
            out[i] = logps[offset:offset + n]
            offset += n
    return out


@torch.inference_mode()
def shared_prompt_logps(model: Any, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]],
                        pad_id: int, batch_size: int = 32) -> list[list[list[float]]]:
    """Per-token log-probs of several completions of each prompt (``completions[i]`` continue
    ``prompts[i]``), the prompt run once: its KV cache is copied to each of its completions, which
    then run alone. For held-out preference pairs (two responses to one dialogue, whose prompt is
    most of each sequence: HH with SmolLM2, prompts ~105 tokens, responses ~40) this is ~40% fewer
    tokens through the model than :func:`completion_logps` over both full sequences, with the same
    values up to float32 rounding of differently batched matmuls. Batches are cut by the same
    budgets (completion rows count against them)."""
    out: list[list[list[float]]] = [[[] for _ in cs] for cs in completions]
    device = next(model.parameters()).device
    k = max((len(cs) for cs in completions), default=1) or 1
    # batched by the longest completion of each prompt (their padding is paid once per completion row);
    # the longest prompt stands in for each prompt's length, so the token budget is an upper bound
    longest_prompt = max((len(p) for p in prompts), default=0)
    lengths = [(longest_prompt + max((len(c) for c in cs), default=0), sum(len(c) for c in cs))
               for cs in completions]
    from transformers import DynamicCache

    for batch in token_budget_batches(lengths, max(1, batch_size // k), max_tokens=MAX_BATCH_TOKENS // k):
        idx = [i for i in batch if any(completions[i])]
        if not idx:
            continue
        ids, attn = left_padded([prompts[i] for i in idx], pad_id)  # every prompt ends at the last column
        positions = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 0)
        cache = DynamicCache()
        # the last prompt position predicts each completion's first token
        first = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=positions.to(device),
                      cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        first = first - torch.logsumexp(first, dim=-1, keepdim=True)
        rows = [(j, i, c) for j, i in enumerate(idx) for c, tokens in enumerate(completions[i]) if tokens]
        # completion rows run longest first in groups of <= COMPLETION_GROUP_TOKENS padded tokens, each
        # on a copy of its prompts' cache rows: a pair's two responses and the batch's prompts differ
        # in length, and padding every row to the batch's longest response cost as many tokens as the
        # responses themselves (HH, 64 pairs: 20.0k tokens through the model for 11.8k real ones; 15.3k with groups)
        rows.sort(key=lambda row: -len(completions[row[1]][row[2]]))
        groups = _padded_groups([len(completions[i][c]) for _, i, c in rows], COMPLETION_GROUP_TOKENS)
        for g, group in enumerate(groups):
            selected = [rows[r] for r in group]
            group_cache = cache if g == len(groups) - 1 else copy.deepcopy(cache)
            group_cache.batch_select_indices(torch.tensor([j for j, _, _ in selected], device=device))
            _score_completions(model, selected, prompts, completions, attn, group_cache, first, pad_id, device, out)
    return out


#: padded completion tokens per forward of :func:`shared_prompt_logps` (their logits are kept: under
#: MAX_KEPT_TOKENS). Measured on SmolLM2 with HH's 64 held-out pairs: one group per prompt batch
#: 54-57 s, 2048 tokens 47 s, 1024 41 s, 512 40 s; values within 9e-5 nats of one group
COMPLETION_GROUP_TOKENS = 1024


def _padded_groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive indices of ``lengths`` (sorted longest first) in groups whose rows x longest row stays
    within ``budget`` (a row longer than the budget goes alone)."""
    groups: list[list[int]] = []
    for r, length in enumerate(lengths):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _score_completions(model: Any, rows: Sequence[tuple[int, int, int]], prompts: Sequence[Sequence[int]],
                       completions: Sequence[Sequence[Sequence[int]]], attn: torch.Tensor, cache: Any,
                       first: torch.Tensor, pad_id: int, device: Any, out: list[list[list[float]]]) -> None:
    """One forward of completion rows ``(prompt row j in the batch, prompt i, completion c)`` after their
    prompts' ``cache``; fills ``out[i][c]`` with the per-token log-probs (``first``: the prompt's last
    position's log-probs, which score each completion's first token)."""
    comp_width = max(len(completions[i][c]) for _, i, c in rows)
    comp = torch.full((len(rows), comp_width), pad_id, dtype=torch.long)
    comp_attn = torch.zeros((len(rows), comp_width), dtype=torch.long)
    keep = torch.zeros((len(rows), comp_width), dtype=torch.bool)
    targets = []
    for r, (_, i, c) in enumerate(rows):
        tokens = completions[i][c]
        comp[r, :len(tokens)] = torch.tensor(list(tokens))
        comp_attn[r, :len(tokens)] = 1
        keep[r, :len(tokens) - 1] = True  # completion position t predicts token t+1
        targets.extend(tokens[1:])
    prompt_lens = torch.tensor([len(prompts[i]) for _, i, _ in rows])
    comp_positions = prompt_lens[:, None] + torch.arange(comp_width)[None, :]
    full_attn = torch.cat([attn[[j for j, _, _ in rows]], comp_attn], dim=1)
    logits, _ = kept_logits(model, comp.to(device), full_attn.to(device), keep.to(device), cache=cache,
                            position_ids=comp_positions.to(device), use_cache=True)
    target = torch.tensor(targets, dtype=torch.long, device=logits.device)
    rest = (logits.gather(-1, target[:, None]).squeeze(-1).float()
            - torch.logsumexp(logits.float(), dim=-1)).tolist() if targets else []
    offset = 0
    for j, i, c in rows:
        tokens = completions[i][c]
        out[i][c] = [float(first[j, tokens[0]])] + rest[offset:offset + len(tokens) - 1]
        offset += len(tokens) - 1


def _load_pair(policy_path: str, reference_path: str, dtype: str = "float32"):
    policy, tokenizer = load_for_inference(policy_path, parse_dtype(dtype))
    reference, ref_tokenizer = load_for_inference(reference_path, parse_dtype(dtype))
    if tokenizer.get_vocab() != ref_tokenizer.get_vocab():
        raise ValueError(f"policy {policy_path} and reference {reference_path} use different tokenizers; "
                         "KL by teacher forcing needs the same vocabulary")
    return policy, reference, tokenizer


def sequence_kl(policy_path: str, reference_path: str, prompts: Sequence[str], completions: Sequence[str],
                batch_size: int = 32, dtype: str = "float32", prompt_format: PromptFormat | None = None
                ) -> list[float]:
    """KL(pi||ref) estimate per sample: sum over completion tokens of log pi - log ref.

    ``prompt_format``: the format the samples were generated (and the policy trained) with;
    ``None`` = plain text, untruncated."""
    policy, reference, tokenizer = _load_pair(policy_path, reference_path, dtype)
    rows = _encode(tokenizer, prompts, completions, prompt_format)
    lp = completion_logps(policy, rows, tokenizer.pad_token_id, batch_size)
    del policy
    lr = completion_logps(reference, rows, tokenizer.pad_token_id, batch_size)
    return [float(sum(a) - sum(b)) for a, b in zip(lp, lr)]


def reference_logps(reference_path: str, prompts: Sequence[str], token_ids: Sequence[Sequence[int]],
                    batch_size: int = 32, dtype: str = "float32", prompt_format: PromptFormat | None = None
                    ) -> list[list[float]]:
    """The reference's per-token log-probs of sampled completions given as token ids (no decode ->
    re-tokenise round trip; an EOS the sampler drew is scored like any other token). With the
    policy's log-probs from the sampler this is the whole KL estimate: one forward, not two."""
    reference, tokenizer = load_for_inference(reference_path, parse_dtype(dtype))
    rows = []
    for prompt, ids in zip(prompts, token_ids):
        p = encode(tokenizer, prompt, prompt_format)
        rows.append((p + list(ids), len(p)))
    return completion_logps(reference, rows, tokenizer.pad_token_id, batch_size)


def _encode_pairs(tokenizer: Any, pairs: Sequence[Any], prompt_format: PromptFormat | None
                  ) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Prompt ids (as :func:`_encode` makes them) and the [chosen, rejected] completion ids of each pair."""
    prompts = [encode(tokenizer, p.prompt, prompt_format) for p in pairs]
    completions = [[tokenizer(text, add_special_tokens=False)["input_ids"] if text else [] for text in (p.chosen, p.rejected)]
                   for p in pairs]
    return prompts, completions


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary: log-probs of two models are compared (margins, KL) only
    over the same tokens."""
    from bench.hashing import stable_hash

    return stable_hash(sorted(tokenizer.get_vocab().items()))


def summed_pair_logps(model_path: str, pairs: Sequence[Any], batch_size: int = 32, dtype: str = "float32",
                      prompt_format: PromptFormat | None = None) -> tuple[list[float], list[float], str]:
    """Summed completion log-probs of every held-out pair's chosen and of its rejected response under
    one model (prompts encoded with ``prompt_format`` as in :func:`sequence_kl`, each prompt run once:
    :func:`shared_prompt_logps`), and the fingerprint of the model's vocabulary.

    One model per call: the ``pairs`` stage computes the reference's values once per suite (a cached
    stage of its own) and each policy's against them."""
    model, tokenizer = load_for_inference(model_path, parse_dtype(dtype))
    prompts, completions = _encode_pairs(tokenizer, pairs, prompt_format)
    logps = shared_prompt_logps(model, prompts, completions, tokenizer.pad_token_id, batch_size)
    return [sum(x[0]) for x in logps], [sum(x[1]) for x in logps], vocabulary_fingerprint(tokenizer)
