"""Metrics shared by tasks: thin wrappers over rouge-score and sacrebleu, the two diversity numbers
no library computes the way the PO papers report them (distinct-n, token entropy), the held-out
pairs' alignment accuracy, and a judge's verdict on completions against their reference texts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from tasks.base import PairLogps, Sample, TaskError, group_by_prompt, mean

if TYPE_CHECKING:
    from tasks.judges import Judge


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


def token_entropy_per_sample(samples: Sequence[Sample], estimator: str) -> list[float | None]:
    """Each sample's mean per-token entropy (nats) with the estimator :func:`mean_token_entropy` chose
    for the set ("exact" or "sampled-token surprisal"); None for a sample without those values. These
    are the per-prompt unit of the metric's confidence interval (the set's value weights tokens)."""
    out: list[float | None] = []
    for s in samples:
        values = s.entropies if estimator == "exact" else [-lp for lp in s.logprobs or []]
        out.append(sum(values) / len(values) if values else None)
    return out


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


def pair_alignment(pair: PairLogps) -> float:
    """One held-out pair's alignment value: 1 when the implicit reward log pi/ref ranks the chosen
    response first (margin > 0), 0 when it ranks the rejected one first, 1/2 for a tie (margin exactly
    0: the reference against itself, whose implicit reward is 0 for every response)."""
    margin = pair.implicit_margin
    return 1.0 if margin > 0 else 0.0 if margin < 0 else 0.5


def alignment_accuracy(pair_logps: Sequence[PairLogps] | None) -> float | None:
    """Share of held-out pairs whose implicit reward log pi/ref ranks the chosen response first
    (TDPO's "alignment accuracy", Table 1), ties counted 1/2 (:func:`pair_alignment`); None without pairs."""
    if not pair_logps:
        return None
    return mean(pair_alignment(p) for p in pair_logps)


ALL_TIES_NOTE = ("all {n} held-out pairs tie (implicit reward log pi/ref equal for chosen and rejected, as for the "
                 "reference policy, whose implicit reward is 0 for every response): 0.5 by construction, ties "
                 "counting 1/2")


def alignment_scores(pair_logps: Sequence[PairLogps] | None, metrics: dict[str, float], missing: dict[str, str],
                     notes: dict[str, str]) -> list[dict[str, Any]]:
    """``alignment_accuracy`` of held-out pairs into ``metrics`` (or the reason into ``missing``), a note
    when it holds by construction (every pair ties), and the per-pair rows (``Scores.per_pair``): the
    pair's id as its unit (``prompt_id``), its value (1, 1/2, 0) and its implicit-reward margin."""
    accuracy = alignment_accuracy(pair_logps)
    if accuracy is None:
        missing["alignment_accuracy"] = "no PairLogps for the held-out pairs (task.eval_pairs())"
        return []
    metrics["alignment_accuracy"] = accuracy
    rows = [{"prompt_id": p.pair_id, "alignment_accuracy": pair_alignment(p), "implicit_margin": p.implicit_margin}
            for p in pair_logps]
    if all(p.implicit_margin == 0 for p in pair_logps):
        notes["alignment_accuracy"] = ALL_TIES_NOTE.format(n=len(rows))
    return rows


def judge_against_reference(judge: Judge, prompts: Sequence[str], completions: Sequence[str],
                            references: Sequence[str], per_sample: list[dict[str, Any]], metrics: dict[str, float],
                            missing: dict[str, str], *, similarity_metric: str, reference_name: str
                            ) -> list[float] | None:
    """Completions against their reference texts with a task's judge, into ``metrics``/``per_sample``.

    A pairwise LLM or reward-model judge gives ``win_rate`` (ties 1/2; ``win`` per sample). The
    offline embedding judge cannot say which text is better: it gives the mean cosine similarity
    to the reference under ``similarity_metric`` (per sample too), ``win_rate`` goes to ``missing``
    with the reason, and the similarities are returned (None with any other judge)."""
    from tasks.judges import EmbeddingJudge

    if isinstance(judge, EmbeddingJudge):
        sims = judge.similarity(completions, references)
        metrics[similarity_metric] = mean(sims)
        for row, sim in zip(per_sample, sims):
            row[similarity_metric] = sim
        missing["win_rate"] = ("needs a pairwise LLM judge (llm:<url>?model=..) or a reward model; the offline "
                               f"embedding fallback measures similarity to {reference_name} only")
        return sims
    wins = judge.compare(prompts, completions, references)
    metrics["win_rate"] = mean(wins)
    for row, win in zip(per_sample, wins):
        row["win"] = win
    return None
