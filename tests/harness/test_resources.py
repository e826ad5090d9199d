"""Per-stage peak resident memory (bench.resources.PeakRSS): what a block allocates shows in its peak."""
from __future__ import annotations

import numpy as np

from bench.resources import PeakRSS, rss_mb


def test_peak_rss_sees_an_allocation_made_and_freed_inside_the_block():
    before = rss_mb()
    assert before is not None and before > 10
    with PeakRSS(interval_s=0.01) as peak:
        block = np.ones(64 * 2**20 // 8 * 4)  # 256 MiB of float64, touched
        block[::4096] += 1.0
        total = float(block.sum())
        del block
    assert total > 0
    assert peak.start_mb is not None and abs(peak.start_mb - before) < 64
    assert peak.peak_mb - peak.start_mb >= 200  # the 256 MiB array, though it was freed before the block ended


def test_peak_rss_of_an_idle_block_is_about_its_start():
    with PeakRSS(interval_s=0.01) as peak:
        sum(range(1000))
    assert peak.peak_mb - peak.start_mb < 32


def test_suite_profile_counts_the_pairs_stage_in_the_evaluated_point():
    """bench.perf_suite.summarize on hand-made stage rows: medians per kind, score / generate, pairs added."""
    from bench.perf_suite import summarize

    def row(stage, seconds, peak=1000.0):
        return {"stage": stage, "label": stage, "key": "k", "done": True, "seconds": seconds, "peak_rss_mb": peak,
                "rss_before_mb": 500.0}

    rows = [row("generate", 20.0), row("generate", 30.0), row("generate", 24.0),
            row("score", 10.0), row("score", 12.0), row("score", 14.0, peak=5000.0),
            row("pairs", 40.0), row("pairs", 44.0), row("train", 100.0)]
    report = summarize(rows)
    point = report["evaluated_point"]
    assert (point["generate_s"], point["score_s"], point["pairs_s"]) == (24.0, 12.0, 42.0)
    assert point["score_over_generate"] == 0.5 and point["total_s"] == 78.0
    assert report["by_stage"]["pairs"]["count"] == 2 and report["stage_seconds"] == 294.0
    assert report["memory_target"]["met"] is False and report["memory_target"]["over"] == ["score score"]
    without = summarize([r for r in rows if r["stage"] != "pairs"])["evaluated_point"]
    assert "pairs_s" not in without and without["total_s"] == 36.0
