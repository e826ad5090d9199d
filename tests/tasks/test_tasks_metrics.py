"""Text metrics: ROUGE against rouge-score directly, distinct-n and self-BLEU by hand."""
from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from tasks.base import Sample
from tasks.metrics import distinct_n, mean_token_entropy, rouge, self_bleu, self_bleu_by_prompt

PREDS = ["the cat sat on the mat", "police killed the gunman", "a b c d", "running runners ran"]
REFS = ["the cat was on the mat", "the gunman was shot by police", "e f g h", "the runner runs"]


def test_rouge_matches_rouge_score_directly():
    means, rows = rouge(PREDS, REFS)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for pred, ref, row in zip(PREDS, REFS, rows):
        direct = scorer.score(ref, pred)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert row[key] == pytest.approx(direct[key].fmeasure)
    assert means["rouge1"] == pytest.approx(sum(r["rouge1"] for r in rows) / len(rows))


def test_rouge_hand_worked():
    # pred "the cat sat on the mat" vs ref "the cat was on the mat": 5 of 6 unigrams overlap -> P=R=F=5/6;
    # bigrams: pred {the cat, cat sat, sat on, on the, the mat}, ref {the cat, cat was, was on, on the,
    # the mat}: 3 of 5 -> F = 0.6; LCS "the cat on the mat" = 5 -> F = 5/6. Disjoint texts give 0.
    _, rows = rouge(PREDS[:1] + PREDS[2:3], REFS[:1] + REFS[2:3])
    assert rows[0] == pytest.approx({"rouge1": 5 / 6, "rouge2": 0.6, "rougeL": 5 / 6})
    assert rows[1] == pytest.approx({"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})


def test_distinct_n_hand_worked():
    texts = ["a b a b", "a c"]
    # unigrams: a b a b a c -> 3 unique / 6; bigrams: ab ba ab | ac -> {ab, ba, ac} 3 / 4
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) is None


def test_self_bleu():
    assert self_bleu(["the same sentence here", "the same sentence here"]) == pytest.approx(100.0)
    low = self_bleu(["alpha beta gamma delta", "one two three four"])
    assert low < 5.0
    assert self_bleu(["only one"]) is None
    samples = [Sample("p", "P", "x y z w", 0), Sample("p", "P", "x y z w", 1), Sample("q", "Q", "u v", 0)]
    value, scope = self_bleu_by_prompt(samples)
    assert scope == "within prompt" and value == pytest.approx(100.0)


def test_token_entropy_prefers_exact_values():
    exact = [Sample("p", "P", "x", logprobs=[-1.0, -3.0], entropies=[0.5, 1.5])]
    assert mean_token_entropy(exact) == (1.0, "exact")
    sampled = [Sample("p", "P", "x", logprobs=[-1.0, -3.0]), Sample("q", "Q", "y", logprobs=[-2.0])]
    value, how = mean_token_entropy(sampled)
    assert value == pytest.approx(2.0) and how == "sampled-token surprisal"
    assert mean_token_entropy([Sample("p", "P", "x")])[0] is None
