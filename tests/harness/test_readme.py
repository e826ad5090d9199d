"""Results in README and docs are generated from the committed leaderboards, never typed by hand."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import readme
from bench.leaderboard import load_leaderboard

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_results_block_is_the_summary_of_its_committed_leaderboard(path):
    text = path.read_text()
    for match in readme.BLOCK.finditer(text):
        board = load_leaderboard(REPO / "results" / match.group("suite"))
        assert match.group("body") == readme.summary(board), (
            f"{path.name}: the results block of {match.group('suite')} is stale; regenerate it with "
            f"`pobench leaderboard {match.group('suite')} --readme {path.relative_to(REPO)}`")


def test_update_rewrites_only_the_marked_block(tmp_path):
    board = {"suite": "s", "rows": [], "ranking": {}, "frontiers": [], "contrasts": []}
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- pobench:results s -->\nold numbers\n<!-- /pobench:results -->\noutro\n")
    assert readme.update(doc, {"s": board})
    assert doc.read_text() == f"intro\n<!-- pobench:results s -->\n{readme.summary(board)}<!-- /pobench:results -->\noutro\n"
    assert not readme.update(doc, {"s": board})  # idempotent
