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
        configurations = {r["label"] for r in board["rows"] if r["kind"] == "measured" and r["task"] == task}
        lines.append(f"**{board['suite']} / {task}** ({len(configurations)} configurations, seeds "
                     f"{seeds}; reference {metric} {ref_value:.3f}):" if ref_value is not None else
                     f"**{board['suite']} / {task}**:")
        lines.append("")
        if not levels:
            lines.append(f"No matched-KL comparison: {ranking.get('reason') or 'no KL levels'}.")
            lines.append("")
            lines.extend(_raw_table(board, task))
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
    lines.extend(paper_orderings(board))
    compute = board.get("compute") or {}
    if compute.get("stages"):
        hardware = (board.get("manifest") or {}).get("hardware") or {}
        machine = ", ".join(str(v) for v in (f"{hardware.get('cpu_count')} CPUs" if hardware.get("cpu_count") else None,
                                            hardware.get("cpu_model")) if v)
        peak = compute.get("peak_rss_mb")
        lines.append(f"Compute: {compute['stages']} stages, {compute['stage_seconds'] / 60:.1f} min of stage time "
                     f"(each stage once, as recorded when it ran{'; ' + machine if machine else ''})"
                     + (f", {compute['span_seconds'] / 60:.1f} min from the first stage's start to the last one's end "
                        "(stages side by side: executor.jobs)"
                        if compute.get("span_seconds") and compute["span_seconds"] < compute["stage_seconds"] else "")
                     + (f"; largest peak resident memory of a stage {peak / 1024:.1f} GiB" if peak else "") + ".")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _raw_table(board: dict[str, Any], task: str) -> list[str]:
    """Without KL, each configuration's metrics at its last step with CIs and the paired difference to
    the reference (its CI says whether the row is distinguishable from the policy it started from)."""
    names = [name for name, info in (board.get("metrics") or {}).items() if info.get("higher_is_better")
             and any(r["task"] == task and name in r["metrics"] for r in board["rows"] if r["kind"] == "measured")]
    last: dict[str, dict[str, Any]] = {}
    for row in (r for r in board["rows"] if r["kind"] in ("measured", "reference") and r["task"] == task):
        if row["label"] not in last or (row.get("step") or 0) > (last[row["label"]].get("step") or 0):
            last[row["label"]] = row
    if not names or not last:
        return []
    first = names[0]
    order = sorted(last.values(), key=lambda r: -(r["metrics"].get(first, {}).get("mean") or 0.0))
    header = ["configuration", *names, *[f"{n} vs reference" for n in names]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in order:
        values = [_mean_ci(row["metrics"].get(n, {})) for n in names]
        diffs = [_mean_ci((row.get("vs_reference") or {}).get(n, {})) if row["kind"] != "reference" else "-"
                 for n in names]
        lines.append("| " + " | ".join([row["label"], *values, *diffs]) + " |")
    return lines + [""]


def _mean_ci(stats: dict[str, Any]) -> str:
    return _ci({"value": stats.get("mean"), "ci": stats.get("ci")})


def _paper_method(label: str) -> str:
    """``"tdpo2 (paper)"`` -> ``"tdpo2"``."""
    return label.split(" (")[0].strip()


def paper_orderings(board: dict[str, Any]) -> list[str]:
    """Per task and metric with published values for two or more methods: the paper's ordering of those
    methods beside this suite's (each method's last evaluated step, mean and CI), and whether it agrees.
    An ordering counts as established only when the CIs of neighbouring methods do not overlap."""
    rows = board["rows"]
    lines: list[str] = []
    for task in sorted({r["task"] for r in rows if r["kind"] == "paper"}):
        paper: dict[str, dict[str, float]] = {}
        for row in (r for r in rows if r["kind"] == "paper" and r["task"] == task):
            for metric, stats in row["metrics"].items():
                paper.setdefault(metric, {})[_paper_method(row["method"])] = stats["mean"]
        last: dict[str, dict[str, Any]] = {}
        for row in (r for r in rows if r["kind"] == "measured" and r["task"] == task):
            if row["label"] not in last or (row.get("step") or 0) > (last[row["label"]].get("step") or 0):
                last[row["label"]] = row
        table = []
        for metric, published in sorted(paper.items()):
            methods = [m for m in published if m in last and last[m]["metrics"].get(metric, {}).get("mean") is not None]
            if len(methods) < 2:
                continue
            theirs = sorted(methods, key=lambda m: -published[m])
            ours = sorted(methods, key=lambda m: -last[m]["metrics"][metric]["mean"])
            stats = {m: last[m]["metrics"][metric] for m in methods}
            overlap = any(stats[a].get("ci") is None or stats[b].get("ci") is None
                          or stats[a]["ci"][0] <= stats[b]["ci"][1] for a, b in zip(ours, ours[1:]))
            verdict = ("yes" if theirs == ours else "no") + (
                "; CIs overlap: not established at this scale" if overlap else "; CIs apart")
            table.append(f"| {metric} | {' > '.join(f'{m} {published[m]:.3f}' for m in theirs)} | "
                         f"{' > '.join(f'{m} {_mean_ci(stats[m])}' for m in ours)} | {verdict} |")
        if table:
            lines += [f"Published values (`paper` rows; another model and budget) against this suite's last step, "
                      f"{task}:", "", "| metric | paper | this suite [95% CI] | same ordering? |",
                      "|---|---|---|---|", *table, ""]
    return lines


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
