"""BCR's iterative pairwise ranking as a preference-data generator (Chen et al. 2024, arXiv 2411.05875).

For each prompt, the N sampled completions are ordered by a comparison sort whose comparator is a
pairwise judge (:meth:`tasks.judges.Judge.compare`), then the best and the worst become the
chosen/rejected pair. This needs O(N log N) judge calls per prompt instead of the N(N-1)/2 of a
round robin, and never asks the judge for an absolute score. :func:`compare_with_pointwise`
contrasts the result with pointwise scoring (best vs worst by a reward), as the paper does.

The sort is Python's ``sorted`` with ``functools.cmp_to_key`` (a stable merge-based sort); a tie
(0.5, e.g. the LLM judge disagreeing with itself across orders) compares equal and keeps sample
order. Verdicts are cached per prompt, so no pair is asked twice.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tasks.base import PreferencePair, Sample, TaskError, group_by_prompt
from tasks.judges import Judge, TIE


@dataclass
class Ranking:
    """Sample indices of one prompt, best first, and how many judge comparisons it took."""

    prompt_id: str
    order: list[int]
    verdicts: dict[tuple[int, int], float] = field(default_factory=dict)
    ask: Callable[[int, int], float] | None = field(default=None, repr=False)

    @property
    def comparisons(self) -> int:
        return len(self.verdicts)

    def verdict(self, i: int, j: int) -> float:
        """The judge's (cached) verdict on sample i vs sample j: 1, 0 or 0.5."""
        if self.ask is None:
            raise TaskError("this Ranking has no judge attached")
        return self.ask(i, j)


def rank_prompt(samples: Sequence[Sample], indices: Sequence[int], judge: Judge) -> Ranking:
    """Order ``samples[indices]`` (same prompt) best-first with ``judge`` as the comparator."""
    verdicts: dict[tuple[int, int], float] = {}

    def verdict(i: int, j: int) -> float:
        """P(samples[i] better than samples[j]) as the judge says: 1, 0 or 0.5."""
        if (i, j) in verdicts:
            return verdicts[(i, j)]
        if (j, i) in verdicts:
            return 1.0 - verdicts[(j, i)]
        a, b = samples[i], samples[j]
        references = [a.reference] if a.reference is not None else None
        value = judge.compare([a.prompt], [a.completion], [b.completion], references)[0]
        verdicts[(i, j)] = value
        return value

    def better_first(i: int, j: int) -> int:
        value = verdict(i, j)
        return -1 if value > TIE else 1 if value < TIE else 0

    order = sorted(indices, key=functools.cmp_to_key(better_first))
    return Ranking(prompt_id=samples[indices[0]].prompt_id, order=order, verdicts=verdicts, ask=verdict)


def rank_samples(samples: Sequence[Sample], judge: Judge, max_workers: int = 4) -> list[Ranking]:
    """Rank every prompt's samples; prompts run concurrently (judge calls are I/O for LLM judges)."""
    groups = [idx for idx in group_by_prompt(samples).values()]
    if not groups:
        return []
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        return list(pool.map(lambda idx: rank_prompt(samples, idx, judge), groups))


def pairs_by_ranking(samples: Sequence[Sample], judge: Judge, require_win: bool = True,
                     max_workers: int = 4) -> list[PreferencePair]:
    """Best vs worst per prompt after the pairwise sort (see :func:`rank_and_pair`)."""
    return rank_and_pair(samples, judge, require_win, max_workers)[0]


def rank_and_pair(samples: Sequence[Sample], judge: Judge, require_win: bool = True,
                  max_workers: int = 4) -> tuple[list[PreferencePair], list[Ranking]]:
    """Best vs worst per prompt after the pairwise sort, and the rankings themselves.

    ``require_win``: keep a pair only when the judge strictly prefers the best over the worst (a
    prompt whose samples all tie gives no pair). The rankings carry the number of comparisons and
    feed :func:`compare_with_pointwise`.
    """
    rankings = rank_samples(samples, judge, max_workers)
    pairs = []
    for ranking in rankings:
        if len(ranking.order) < 2:
            continue
        best, worst = ranking.order[0], ranking.order[-1]
        if samples[best].completion == samples[worst].completion:
            continue
        win = ranking.verdict(best, worst)
        if require_win and win <= TIE:
            continue
        pairs.append(PreferencePair(
            prompt=samples[best].prompt, chosen=samples[best].completion, rejected=samples[worst].completion,
            id=ranking.prompt_id, meta={"generator": "pairwise_ranking", "judge": judge.label,
                                        "comparisons": ranking.comparisons, "n_candidates": len(ranking.order),
                                        "best_vs_worst": win}))
    return pairs, rankings


def compare_with_pointwise(samples: Sequence[Sample], rankings: Sequence[Ranking],
                           scores: Sequence[float]) -> dict[str, Any]:
    """How pairwise ranking agrees with pointwise scoring on the same samples.

    ``kendall_tau``: mean over prompts of Kendall's tau-b between the pairwise order and the
    pointwise scores; ``same_best`` / ``same_worst`` / ``same_pair``: fraction of prompts where both
    generators pick the same chosen / rejected / both; ``comparisons_per_prompt``: judge calls used.
    """
    from scipy.stats import kendalltau

    if len(scores) != len(samples):
        raise TaskError(f"{len(samples)} samples but {len(scores)} pointwise scores")
    taus, same_best, same_worst, same_pair, comparisons = [], [], [], [], []
    for ranking in rankings:
        order = ranking.order
        if len(order) < 2:
            continue
        position = {idx: rank for rank, idx in enumerate(order)}
        # pairwise rank: 0 = best; negate so that higher = better on both sides
        tau = kendalltau([-position[i] for i in order], [scores[i] for i in order]).statistic
        if tau == tau:  # NaN when one side is constant
            taus.append(float(tau))
        pointwise_best = max(order, key=lambda i: (scores[i], -i))
        pointwise_worst = min(order, key=lambda i: (scores[i], -i))
        same_best.append(float(order[0] == pointwise_best))
        same_worst.append(float(order[-1] == pointwise_worst))
        same_pair.append(float(order[0] == pointwise_best and order[-1] == pointwise_worst))
        comparisons.append(ranking.comparisons)

    def avg(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return {"prompts": len(same_best), "kendall_tau": avg(taus), "same_best": avg(same_best),
            "same_worst": avg(same_worst), "same_pair": avg(same_pair),
            "comparisons_per_prompt": avg([float(c) for c in comparisons])}
