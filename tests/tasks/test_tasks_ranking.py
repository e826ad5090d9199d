"""BCR's iterative pairwise ranking: agrees with pointwise scoring for a consistent judge, uses
O(N log N) comparisons, handles ties, and runs against the loopback LLM judge."""
from __future__ import annotations

import math
import random

import pytest

from tasks import judges
from tasks.base import Sample
from tasks.judges import Judge, TIE
from tasks.ranking import compare_with_pointwise, pairs_by_ranking, rank_and_pair
from tests.fixtures.tasks_support import JudgeServer


class NumberJudge(Judge):
    """Completions are numbers; the larger wins. Counts calls."""

    name, kind = "number", "pairwise"

    def __init__(self) -> None:
        self.calls = 0

    def compare(self, prompts, a, b, references=None):
        self.calls += len(a)
        return [1.0 if float(x) > float(y) else 0.0 if float(x) < float(y) else TIE for x, y in zip(a, b)]


def _samples(values_by_prompt):
    return [Sample(pid, f"prompt {pid}", str(v), i) for pid, values in values_by_prompt.items()
            for i, v in enumerate(values)]


def test_ranking_sorts_best_first_and_pairs_best_vs_worst():
    rng = random.Random(0)
    values = {f"p{k}": rng.sample(range(100), 16) for k in range(5)}
    samples = _samples(values)
    judge = NumberJudge()
    pairs, rankings = rank_and_pair(samples, judge, max_workers=1)
    for ranking in rankings:
        ranked_values = [float(samples[i].completion) for i in ranking.order]
        assert ranked_values == sorted(ranked_values, reverse=True)
        # a comparison sort: far fewer than the 120 comparisons of a round robin over 16 samples
        assert ranking.comparisons <= 16 * math.ceil(math.log2(16))
    assert [(p.id, p.chosen, p.rejected) for p in pairs] == [
        (pid, str(max(v)), str(min(v))) for pid, v in values.items()]
    assert all(p.meta["generator"] == "pairwise_ranking" and p.meta["best_vs_worst"] == 1.0 for p in pairs)
    assert judge.calls == sum(r.comparisons for r in rankings)  # cached: best-vs-worst was already asked


def test_ties_give_no_pair_and_pointwise_agreement_is_measured():
    samples = _samples({"flat": [5, 5, 5], "steep": [1, 9, 4]})
    pairs = pairs_by_ranking(samples, NumberJudge())
    assert [p.id for p in pairs] == ["steep"]  # all-tied prompt gives nothing (the texts are equal anyway)
    pairs, rankings = rank_and_pair(samples, NumberJudge())
    scores = [float(s.completion) for s in samples]
    agreement = compare_with_pointwise(samples, rankings, scores)
    assert agreement["same_pair"] == 1.0 and agreement["prompts"] == 2
    assert agreement["kendall_tau"] == pytest.approx(1.0)  # the flat prompt has no tau (constant)
    reversed_scores = [-x for x in scores]
    assert compare_with_pointwise(samples, rankings, reversed_scores)["kendall_tau"] == pytest.approx(-1.0)


def test_pointwise_judge_ranking_matches_pointwise_pairs():
    vader = judges.build("sentiment:vader")
    texts = [" was wonderful, I loved it", " was terrible and boring", " was fine", " was good", " was awful"]
    samples = [Sample("p", "The movie", t, i) for i, t in enumerate(texts)]
    ranked = pairs_by_ranking(samples, vader)
    scores = vader.score([s.prompt for s in samples], [s.completion for s in samples])
    from tasks.base import pairs_from_scores
    pointwise = pairs_from_scores(samples, scores)
    assert [(p.chosen, p.rejected) for p in ranked] == [(p.chosen, p.rejected) for p in pointwise]


def test_ranking_with_the_loopback_llm_judge():
    samples = _samples({"q": [3, 333333, 33, 3333]})
    samples = [Sample(s.prompt_id, s.prompt, "x" * len(s.completion), s.index) for s in samples]  # lengths 1,6,2,4
    with JudgeServer() as server:
        judge = judges.build(f"llm:{server.base_url}?model=longer")
        pairs, rankings = rank_and_pair(samples, judge)
    assert [len(samples[i].completion) for i in rankings[0].order] == [6, 4, 2, 1]
    assert (pairs[0].chosen, pairs[0].rejected) == ("x" * 6, "x")
    assert len(server.seen) == 2 * rankings[0].comparisons  # both orders for every comparison
