"""Results in README/docs are generated from a committed leaderboard, never typed by hand.

A document marks a block with ``<!-- pobench:results SUITE -->`` ... ``<!-- /pobench:results -->``;
:func:`update` rewrites every such block from ``results/SUITE/leaderboard.json`` (``pobench
leaderboard SUITE --readme README.md``) and a test fails when a block and its leaderboard disagree.
The block states what the numbers support: the matched-KL ranking with CIs and, per contrast with
the baseline, its verdict - "no significant difference" included.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BLOCK = re.compile(r"(<!-- pobench:results (?P<suite>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /pobench:results -->)", re.S)


def _ci(stats: dict[str, Any] | None, signed: bool = False) -> str:
    if not stats or stats.get("value", stats.get("difference")) is None:
        return "not reached"
    value = stats.get("value", stats.get("difference"))
    fmt = "{:+.3f}" if signed else "{:.3f}"
    ci = stats.get("ci")
    return fmt.format(value) + (f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else "")


def summary(board: dict[str, Any]) -> str:
    """The README block of one leaderboard (markdown)."""
    lines: list[str] = []
    frontiers = {f["row_id"]: f for f in board.get("frontiers", [])}
    reference = {r["task"]: r for r in board["rows"] if r["kind"] == "reference"}
    for task, ranking in sorted((board.get("ranking") or {}).items()):
        metric, levels = ranking.get("metric"), board.get("kl_levels", {}).get(task) or []
        ref = reference.get(task)
        ref_value = ref["metrics"].get(metric, {}).get("mean") if ref else None
        seeds = sorted({s for r in board["rows"] if r["task"] == task for s in r.get("seeds", [])})
        lines.append(f"**{board['suite']} / {task}** ({len(ranking.get('order', []))} configurations, seeds "
                     f"{seeds}; reference {metric} {ref_value:.3f}):" if ref_value is not None else
                     f"**{board['suite']} / {task}**:")
        lines.append("")
        if not levels:
            lines.append(f"No matched-KL comparison: {ranking.get('reason') or 'no KL levels'}.")
            lines.append("")
            continue
        header = ["rank", "configuration"] + [f"{metric}@KL={k:g}" for k in levels] + [f"{metric} (last step)",
                                                                                      "KL (last step)"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for entry in ranking.get("order", []):
            frontier = frontiers.get(entry["row_id"], {})
            matched = frontier.get("matched", {})
            cells = [_ci(matched.get(f"{metric}@KL={k:g}")) for k in levels]
            final = entry.get("final") or {}
            raw = final.get(metric)
            kl = final.get("kl")
            lines.append("| " + " | ".join([str(entry.get("rank") or "-"), entry["label"], *cells,
                                            "-" if raw is None else f"{raw:.3f}",
                                            "-" if kl is None else f"{kl:.2f}"]) + " |")
        lines.append("")
        contrasts = [c for c in board.get("contrasts", []) if c.get("task") == task]
        if contrasts:
            settings = board.get("matched_kl", {})
            lines.append(f"Against {settings.get('baseline_method', 'the baseline')} at matched KL (paired "
                         f"hierarchical bootstrap over seeds and prompts, Holm-adjusted over "
                         f"{sum(1 for c in board['contrasts'] if c.get('p_holm') is not None)} contrasts):")
            lines.append("")
            lines.append("| configuration | vs | KL | difference [95% CI] | Holm p | verdict |")
            lines.append("|---|---|---|---|---|---|")
            for c in contrasts:
                p = c.get("p_holm")
                lines.append(f"| {c['label']} | {c.get('baseline_label', '')} | {c['kl']:g} | {_ci(c, signed=True)} | "
                             f"{'-' if p is None else f'{p:.3g}'} | {c['verdict']} |")
            lines.append("")
    compute = board.get("compute") or {}
    if compute.get("stages"):
        hardware = (board.get("manifest") or {}).get("hardware") or {}
        machine = ", ".join(str(v) for v in (f"{hardware.get('cpu_count')} CPUs" if hardware.get("cpu_count") else None,
                                            hardware.get("cpu_model")) if v)
        peak = compute.get("peak_rss_mb")
        lines.append(f"Compute: {compute['stages']} stages, {compute['stage_seconds'] / 60:.1f} min of stage time "
                     f"(each stage once, as recorded when it ran{'; ' + machine if machine else ''})"
                     + (f"; largest peak resident memory of a stage {peak / 1024:.1f} GiB" if peak else "") + ".")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def blocks(text: str) -> list[str]:
    """The suites named by the results blocks of a document."""
    return [m.group("suite") for m in BLOCK.finditer(text)]


def update(path: Path, boards: dict[str, dict[str, Any]]) -> bool:
    """Rewrite every results block of ``path`` whose suite is in ``boards``; True when the file changed."""
    text = path.read_text()
    new = BLOCK.sub(lambda m: m.group(1) + (summary(boards[m.group("suite")]) if m.group("suite") in boards
                                             else m.group("body")) + m.group(4), text)
    if new != text:
        path.write_text(new)
    return new != text
