"""Text metrics shared by tasks: thin wrappers over rouge-score and sacrebleu, plus the two
diversity numbers no library computes the way the PO papers report them (distinct-n, token entropy).
"""
from __future__ import annotations

from typing import Sequence

from tasks.base import Sample, TaskError, group_by_prompt


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct-n (Li et al. 2016): unique n-grams / total n-grams over the whole set, on whitespace
    tokens (tokenizer-independent, so policies with different tokenizers compare). None if no n-gram."""
    total, unique = 0, set()
    for text in texts:
        tokens = text.split()
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else None


def mean_token_entropy(samples: Sequence[Sample]) -> tuple[float | None, str]:
    """Mean per-token predictive entropy (nats) of the policy over completion tokens.

    Uses exact ``Sample.entropies`` when the harness provided them; otherwise the Monte-Carlo
    estimate mean(-log pi(y_t)) from the sampled tokens' log-probs (unbiased for samples drawn at
    temperature 1). Returns (value, which estimator was used).
    """
    exact = [e for s in samples if s.entropies for e in s.entropies]
    if exact:
        return sum(exact) / len(exact), "exact"
    surprisal = [-lp for s in samples if s.logprobs for lp in s.logprobs]
    if surprisal:
        return sum(surprisal) / len(surprisal), "sampled-token surprisal"
    return None, "unavailable (no token log-probs in samples)"


def rouge(predictions: Sequence[str], references: Sequence[str],
          types: Sequence[str] = ("rouge1", "rouge2", "rougeL")) -> tuple[dict[str, float], list[dict[str, float]]]:
    """ROUGE F-measures with Porter stemming (the TL;DR papers' setting) via ``rouge-score``.
    Returns (mean per type, per-pair values)."""
    from rouge_score import rouge_scorer
    if len(predictions) != len(references):
        raise TaskError(f"rouge: {len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    rows = []
    for pred, ref in zip(predictions, references):
        result = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        rows.append({t: result[t].fmeasure for t in types})
    means = {t: sum(r[t] for r in rows) / len(rows) for t in types} if rows else {}
    return means, rows


def self_bleu(texts: Sequence[str]) -> float | None:
    """Self-BLEU (Zhu et al. 2018, Texygen): mean sentence BLEU of each text against all the others
    as references (sacrebleu, 0-100 scale; lower = more diverse). None for fewer than two texts."""
    from sacrebleu.metrics import BLEU
    texts = list(texts)
    if len(texts) < 2:
        return None
    bleu = BLEU(effective_order=True)
    values = [bleu.sentence_score(text, texts[:i] + texts[i + 1:]).score for i, text in enumerate(texts)]
    return sum(values) / len(values)


def self_bleu_by_prompt(samples: Sequence[Sample]) -> tuple[float | None, str]:
    """Self-BLEU among the n samples of each prompt, averaged over prompts; with one sample per
    prompt, across the whole set instead. Returns (value, which scope was used)."""
    groups = [g for g in group_by_prompt(samples).values() if len(g) >= 2]
    if groups:
        values = [self_bleu([samples[i].completion for i in g]) for g in groups]
        return sum(values) / len(values), "within prompt"
    return self_bleu([s.completion for s in samples]), "across prompts"
