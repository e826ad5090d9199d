"""Scoring memory is bounded by token budgets, not by the number or length of the sequences
(issue: no stage materialises [sequences x length x vocabulary] logits)."""
from __future__ import annotations

import random

import pytest
import torch

from bench import teacher_forcing
from bench.teacher_forcing import completion_logps, token_budget_batches


def test_token_budget_batches_by_hand():
    # (sequence length, completion length); longest first: rows 2 (10), 0 (8), 3 (6), 1 (4)
    lengths = [(8, 5), (4, 2), (10, 6), (6, 3)]
    assert token_budget_batches(lengths, batch_size=4, max_kept=100, max_tokens=1000) == [[2, 0, 3, 1]]
    assert token_budget_batches(lengths, batch_size=2, max_kept=100, max_tokens=1000) == [[2, 0], [3, 1]]
    # completion budget 11: 6 + 5 = 11 fits, + 3 does not; then 3 + 2
    assert token_budget_batches(lengths, batch_size=4, max_kept=11, max_tokens=1000) == [[2, 0], [3, 1]]
    # padded-token budget 20: two rows of width 10 fit, a third would pad to 30
    assert token_budget_batches(lengths, batch_size=4, max_kept=100, max_tokens=20) == [[2, 0], [3, 1]]
    # a row over every budget still goes, alone
    assert token_budget_batches([(50, 40), (3, 1)], batch_size=4, max_kept=10, max_tokens=20) == [[0], [1]]
    assert token_budget_batches([], batch_size=4) == []


def _rows(n: int, vocab: int, rng: random.Random) -> list[tuple[list[int], int]]:
    rows = []
    for _ in range(n):
        prompt = [rng.randrange(1, vocab) for _ in range(rng.randint(2, 6))]
        completion = [rng.randrange(1, vocab) for _ in range(rng.randint(1, 12))]
        rows.append((prompt + completion, len(prompt)))
    return rows


def test_peak_logits_do_not_grow_with_the_number_of_samples(tiny_dirs, monkeypatch):
    """The largest logits tensor of a scoring pass is the same for 40 and 400 sequences, stays within
    the kept-token budget, and the log-probs do not depend on how the rows were batched."""
    from bench.backends.hf import load_for_inference

    model, tok = load_for_inference(tiny_dirs[1], torch.float32)
    vocab = model.get_output_embeddings().weight.shape[0]
    seen: list[int] = []
    real = teacher_forcing.kept_logits

    def spy(*args, **kwargs):
        logits, out = real(*args, **kwargs)
        seen.append(logits.numel())
        return logits, out

    monkeypatch.setattr(teacher_forcing, "kept_logits", spy)
    monkeypatch.setattr(teacher_forcing, "MAX_KEPT_TOKENS", 64)
    rng = random.Random(0)
    few, many = _rows(40, vocab, rng), _rows(400, vocab, rng)

    def peak(rows, **kw):
        seen.clear()
        result = completion_logps(model, rows, tok.pad_token_id, batch_size=256, **kw)
        return result, max(seen)

    _, peak_few = peak(few)
    big, peak_many = peak(many)
    assert peak_many <= 64 * vocab and peak_few <= 64 * vocab
    assert peak_many <= peak_few + 12 * vocab  # one row's completion of slack: the budget, not the count, decides
    # batching must not change the numbers: one row per forward gives the same log-probs
    monkeypatch.setattr(teacher_forcing, "MAX_KEPT_TOKENS", 10**9)
    single = completion_logps(model, many[:60], tok.pad_token_id, batch_size=1)
    for a, b in zip(big[:60], single):
        assert a == pytest.approx(b, abs=1e-4)
        assert len(a) > 0


@pytest.mark.parametrize("group_tokens", [1, 8, 2048])  # every completion row alone / several groups / one
def test_pairs_scored_with_their_prompt_run_once_equal_full_sequences(tiny_dirs, group_tokens, monkeypatch):
    """shared_prompt_logps (prompt once, its KV cache copied to each response) against completion_logps
    over each full sequence, one row per forward: prompts and responses of different lengths, an empty
    response, a one-token prompt and one-token responses, batches that cut through the pairs, completion
    rows run in groups on copies of their prompts' cache."""
    monkeypatch.setattr(teacher_forcing, "COMPLETION_GROUP_TOKENS", group_tokens)
    from transformers import AutoTokenizer

    from bench.backends.hf import load_for_inference

    model, _ = load_for_inference(tiny_dirs[0], torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_dirs[0])
    texts = [("A long opening line of a review, then", [" good", " bad and then some more words"]),
             ("I", [" x", ""]),
             ("Short", [" the same words", " the same words"]),
             ("Another prompt that is a little longer than the short one", [" ok", " no"])]
    prompts = [tok(p)["input_ids"] for p, _ in texts]
    completions = [[tok(c, add_special_tokens=False)["input_ids"] if c else [] for c in cs] for _, cs in texts]
    for batch_size in (2, 64):
        shared = teacher_forcing.shared_prompt_logps(model, prompts, completions, tok.pad_token_id, batch_size)
        for p, cs, got in zip(prompts, completions, shared):
            for c, values in zip(cs, got):
                full = teacher_forcing.completion_logps(model, [(p + c, len(p))], tok.pad_token_id, batch_size=1)[0]
                assert len(values) == len(c)
                assert values == pytest.approx(full, abs=1e-5)
    assert shared[2][0] == shared[2][1]  # identical responses: identical values


def test_completion_rows_are_grouped_within_the_padded_token_budget():
    # rows x the group's longest row <= budget; consecutive, longest first; a row over the budget goes alone
    assert teacher_forcing._padded_groups([10, 6, 5, 5, 1], 12) == [[0], [1, 2], [3, 4]]
    assert teacher_forcing._padded_groups([20, 3], 12) == [[0], [1]]
    assert teacher_forcing._padded_groups([4, 4, 4], 12) == [[0, 1, 2]]
    assert teacher_forcing._padded_groups([], 12) == []
