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
