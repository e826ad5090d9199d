"""Leaderboard files: ``leaderboard.{json,csv,md,html}`` and matplotlib plots.

Plots (PNG, also embedded in the HTML page so it is one self-contained file):

* ``frontier_<task>.png``: reward (the task's primary metric) vs KL(pi||ref), one curve per
  configuration from the reference (KL 0) through its evaluated checkpoints in KL order (the
  board's ``frontiers``), bootstrap 95% CI error bars on every point and, with >= 2 seeds, a band
  through the points' CIs (seeds and prompts); the matched-KL levels as dotted lines and the KL
  budget as a dashed one. Boards without ``frontiers`` (older files) get one line per method
  through its rows;
* ``bars_<task>.png``: one panel per metric with a direction: row means with 95% CIs.

The markdown and HTML pages add, from the board's ``ranking`` and ``contrasts``, the matched-KL
ranking (primary metric at the first KL level, raw metric and KL of the last checkpoint as columns)
and the contrasts with the baseline method (difference, CI, p, Holm-adjusted p, verdict).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.leaderboard import metric_columns
from bench.store import atomic_write_bytes, atomic_write_json, atomic_write_text


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}f}"
    return str(value)


def _cell(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("mean") is None:
        return ""
    text = _fmt(stats["mean"])
    if stats.get("ci"):
        lo, hi = stats["ci"]
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def _sorted_rows(board: dict[str, Any]) -> list[dict[str, Any]]:
    primary = board.get("primary_metric", {})
    kind_order = {"reference": 0, "measured": 1, "paper": 2}

    def key(row: dict[str, Any]) -> tuple:
        metric = primary.get(row["task"])
        stats = row["metrics"].get(metric) if metric else None
        value = stats["mean"] if stats and stats.get("mean") is not None else -math.inf
        higher = board.get("metrics", {}).get(metric, {}).get("higher_is_better", True) if metric else True
        return (row["task"], kind_order.get(row["kind"], 3) == 2, -value if higher is not False else value)

    return sorted(board["rows"], key=key)


def _gain(row: dict[str, Any], metric: str) -> dict[str, Any] | None:
    return (row.get("vs_reference") or {}).get(metric)


def table_rows(board: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    metrics = metric_columns(board)
    header = ["task", "model", "method", "step", "kind", "seeds"] + metrics
    primary_names = sorted(set(board.get("primary_metric", {}).values()))
    header += [f"{m} vs reference" for m in primary_names] + ["flags"]
    rows = []
    for row in _sorted_rows(board):
        flags = []
        if row.get("kl_budget_exceeded"):
            flags.append(f"KL > {board.get('kl_budget')}")
        if row["kind"] == "paper":
            flags.append(f"paper: {row.get('source', '')}" + (f" ({row['note']})" if row.get("note") else ""))
        flags += [f"{m}: {row['metrics'][m]['note']}" for m in metrics if (row["metrics"].get(m) or {}).get("note")]
        out = [row["task"], row["model"], row["label"], _fmt(row.get("step")), row["kind"],
               ",".join(map(str, row["seeds"]))]
        out += [_cell(row["metrics"].get(m)) for m in metrics]
        out += [_cell(_gain(row, m)) for m in primary_names]
        out.append("; ".join(flags))
        rows.append(out)
    return header, rows


def source_text(source: dict[str, Any] | None) -> str:
    """``kind name #fingerprint`` (8 hex) of a data source: short enough for a table cell."""
    if not source or not source.get("kind"):
        return ""
    name = str(source.get("location") or "").rstrip("/").rsplit("/", 1)[-1]
    fingerprint = str(source.get("fingerprint") or "")[:8]
    return " ".join(part for part in (source["kind"], name, f"#{fingerprint}" if fingerprint else "") if part)


def facts_rows(board: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per measured/reference row: what it was computed from (the data, prompts x samples, training
    steps and the evaluated checkpoint's step, the method's hyperparameters, skipped malformed records)."""
    header = ["task", "model", "method", "step", "data (eval; train)", "prompts x samples", "train steps",
              "hyperparameters", "skipped records"]
    rows = []
    for row in _sorted_rows(board):
        if row["kind"] == "paper":
            continue
        sources = row.get("data_sources") or {}
        evaluated, trained = source_text(sources.get("eval")), source_text(sources.get("prefdata"))
        data = evaluated if trained in ("", evaluated) else f"{evaluated}; {trained}"
        prompts, samples = row.get("prompts"), row.get("samples_per_prompt")
        steps = row.get("train_steps")
        if row.get("kind") == "reference":
            budget = "-"
        elif steps is None:
            budget = "?" if row.get("step") is None else f"? (checkpoint {row['step']})"
        else:
            budget = str(steps) + (f" (checkpoint {row['step']})" if row.get("step") not in (None, steps) else "")
        hparams = row.get("train_hparams") if row.get("train_hparams") is not None else row.get("hparams") or {}
        skipped = row.get("skipped_records") or {}
        rows.append([row["task"], row["model"], row["label"], _fmt(row.get("step")), data,
                     f"{prompts} x {samples}" if prompts else "",
                     budget, ", ".join(f"{k}={v}" for k, v in hparams.items()) or "-",
                     ", ".join(f"{stage} {n}" for stage, n in skipped.items())])
    return header, rows


FACTS_CAPTION = ("The data of each row's evaluation prompts and of its preference data when that differs (kind, "
                 "file or folder, first 8 hex of the fingerprint), prompts x samples evaluated, optimizer steps of its "
                 "training (and the checkpoint evaluated when it is an earlier one), the method's "
                 "hyperparameters with their defaults, and the malformed records its tasks skipped, per stage.")


def write_csv(board: dict[str, Any], path: Path) -> None:
    """Machine-friendly CSV: mean, CI bounds and n as separate columns."""
    metrics = metric_columns(board)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["task", "model", "method", "label", "step", "kind", "seeds", "hparams"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high", f"{m}_n"]
    for m in sorted(set(board.get("primary_metric", {}).values())):
        header += [f"{m}_vs_ref_mean", f"{m}_vs_ref_ci_low", f"{m}_vs_ref_ci_high"]
    header += ["kl_budget_exceeded", "source", "data_source", "train_data_source", "prompts", "samples_per_prompt",
               "train_steps", "train_hparams", "skipped_records"]
    writer.writerow(header)
    for row in _sorted_rows(board):
        out = [row["task"], row["model"], row["method"], row["label"], _fmt(row.get("step")), row["kind"],
               " ".join(map(str, row["seeds"])), ";".join(f"{k}={v}" for k, v in row["hparams"].items())]
        for m in metrics:
            s = row["metrics"].get(m) or {}
            ci = s.get("ci") or [None, None]
            out += [_fmt(s.get("mean"), 6), _fmt(ci[0], 6), _fmt(ci[1], 6), _fmt(s.get("n"))]
        for m in sorted(set(board.get("primary_metric", {}).values())):
            s = _gain(row, m) or {}
            ci = s.get("ci") or [None, None]
            out += [_fmt(s.get("mean"), 6), _fmt(ci[0], 6), _fmt(ci[1], 6)]
        out += [str(row.get("kl_budget_exceeded", "")), row.get("source", "")]
        sources = row.get("data_sources") or {}
        out += [source_text(sources.get("eval")), source_text(sources.get("prefdata")), _fmt(row.get("prompts")),
                _fmt(row.get("samples_per_prompt")), _fmt(row.get("train_steps")),
                ";".join(f"{k}={v}" for k, v in (row.get("train_hparams") or {}).items()),
                ";".join(f"{k}={v}" for k, v in (row.get("skipped_records") or {}).items())]
        writer.writerow(out)
    atomic_write_text(path, buffer.getvalue())


def markdown(board: dict[str, Any]) -> str:
    header, rows = table_rows(board)
    lines = [f"## pobench leaderboard: {board['suite']}", "",
             "Mean [95% CI]; CIs over seeds when a row has several, else over prompts "
             "(metrics of eval_tasks: +-1.96 x the evaluator's standard error over its items). "
             "`vs reference` is the paired per-prompt difference to the reference policy. "
             "`paper` rows are published numbers, not measured here.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    facts_header, facts = facts_rows(board)
    if facts:
        lines += ["", "### What each row was computed from", "", FACTS_CAPTION, "",
                  "| " + " | ".join(facts_header) + " |", "|" + "---|" * len(facts_header)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in facts]
    for section in matched_sections(board):
        lines += ["", f"### {section['title']}", "", section["caption"], ""]
        if section["rows"]:
            lines += ["| " + " | ".join(section["header"]) + " |", "|" + "---|" * len(section["header"])]
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in section["rows"]]
        lines += [f"- {note}" for note in section["notes"]]
    git = board.get("manifest", {}).get("git", {})
    lines += ["", f"config hash `{board.get('config_hash')}`, git `{(git.get('sha') or '?')[:12]}`"
              f"{' (dirty)' if git.get('dirty') else ''}, created {board.get('created_at')}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# matched-KL ranking and contrasts (from the board's ``ranking`` / ``contrasts``)

def _ci_text(value: float | None, ci: list[float] | None, signed: bool = False) -> str:
    if value is None:
        return ""
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if ci:
        text += f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if signed else f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def _p_text(p: float | None) -> str:
    if p is None:
        return ""
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def matched_sections(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Tables for the pages: per task the matched-KL ranking, then the contrasts with the baseline.
    Each: title, caption, header, rows (strings), notes."""
    sections: list[dict[str, Any]] = []
    settings = board.get("matched_kl") or {}
    for task, rank in (board.get("ranking") or {}).items():
        metric, levels = rank.get("metric"), (board.get("kl_levels") or {}).get(task) or []
        names = [f"{metric}@KL={k:g}" for k in levels]
        header = ["rank", "configuration", "model"] + names + ["last step", f"{metric} (raw)", "KL (raw)"]
        rows, notes = [], []
        for entry in rank.get("order", []):
            at = entry.get("at_kl") or {}
            cells = [_fmt(entry.get("rank")), entry["label"], entry["model"]]
            for name in names:
                e = at.get(name)
                cells.append("not reached" if e and not e.get("reached") else
                             _ci_text(e.get("value"), e.get("ci")) if e else "")
            final = entry.get("final") or {}
            cells += [_fmt(final.get("step")), _fmt(final.get(metric)), _fmt(final.get("kl"))]
            rows.append(cells)
            if entry.get("reason"):
                notes.append(f"{entry['label']}: {entry['reason']}")
        if rank.get("reason"):
            notes.insert(0, rank["reason"])
        ci_over = {e.get("ci_over") for f in board.get("frontiers") or [] if f["task"] == task
                   for e in (f.get("matched") or {}).values() if e.get("ci_over")}
        caption = (f"Configurations ranked by {metric} at matched KL = {rank['kl']:g} nats/seq (the first level): "
                   f"linear interpolation on each configuration's frontier from the reference through its "
                   f"checkpoints, never extrapolated; 95% bootstrap CIs over "
                   f"{' / '.join(sorted(ci_over)) or 'prompts'}. "
                   f"Raw {metric} and KL of the last checkpoint are for reference only: raw rewards rank by KL."
                   if rank.get("kl") is not None else f"No matched-KL ranking for {task}.")
        sections.append({"id": f"ranking-{task}", "title": f"Matched-KL ranking: {task}", "caption": caption,
                         "header": header, "rows": rows if rank.get("kl") is not None else [], "notes": notes})
    contrasts = board.get("contrasts") or []
    if contrasts or settings.get("baseline_method"):
        baseline = settings.get("baseline_method")
        header = ["task", "configuration", "baseline", "metric", "KL", "difference [95% CI]", "p", "p (Holm)",
                  "verdict"]
        rows = [[c["task"], c["label"], c["baseline_label"], c["metric"], f"{c['kl']:g}",
                 _ci_text(c.get("difference"), c.get("ci"), signed=True), _p_text(c.get("p_value")),
                 _p_text(c.get("p_holm")), c.get("verdict", "") + (" (*)" if c.get("caution") else "")]
                for c in contrasts]
        caption = (f"Every configuration minus {baseline} (same task and model) at each matched KL level: paired "
                   f"hierarchical bootstrap ({settings.get('n_boot')} resamples of seeds, then prompts shared by "
                   f"both), two-sided p; Holm-adjusted over the {settings.get('holm_family')} tested contrasts; "
                   f"verdict at family-wise alpha = {settings.get('alpha')}." if contrasts else
                   f"No contrasts with {baseline} (see the notes).")
        notes = [f"{task}: {note}" for task, note in (settings.get("notes") or {}).items()]
        if any(c.get("caution") for c in contrasts):
            notes.append("(*) seed-to-seed variation dominates the bootstrap variance and there are <= 4 seeds: "
                         "a percentile bootstrap over so few seeds gives too narrow an interval; run more seeds "
                         "before believing the verdict")
        sections.append({"id": "contrasts", "title": f"Contrasts vs {baseline}", "caption": caption,
                         "header": header, "rows": rows, "notes": notes})
    return sections


# ----------------------------------------------------------------------------------------------
# plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(stats: dict[str, Any]) -> tuple[float, float]:
    if stats.get("ci"):
        return stats["mean"] - stats["ci"][0], stats["ci"][1] - stats["mean"]
    return 0.0, 0.0


def frontier_plot(board: dict[str, Any], task: str, path: Path) -> bool:
    """Primary metric vs KL, one curve per configuration from the reference through its checkpoints
    (the board's ``frontiers``; older boards: one line per method through its rows). False if no data."""
    if "frontiers" in board:
        return _frontier_curves_plot(board, task, path)
    metric = board.get("primary_metric", {}).get(task)
    rows = [r for r in board["rows"] if r["task"] == task and r["kind"] != "paper"
            and metric in r["metrics"] and "kl" in r["metrics"]]
    if not metric or not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
    for i, (method, method_rows) in enumerate(sorted(by_method.items())):
        method_rows.sort(key=lambda r: r["metrics"]["kl"]["mean"])
        xs = [r["metrics"]["kl"]["mean"] for r in method_rows]
        ys = [r["metrics"][metric]["mean"] for r in method_rows]
        xerr = list(zip(*[_err(r["metrics"]["kl"]) for r in method_rows]))
        yerr = list(zip(*[_err(r["metrics"][metric]) for r in method_rows]))
        style = {"color": "black", "marker": "*", "markersize": 14} if method == "reference" else {
            "color": palette[i % len(palette)], "marker": "o"}
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, label=method, capsize=3, linestyle="-", linewidth=1.2, **style)
        if len(method_rows) > 1:
            for r, x, y in zip(method_rows, xs, ys):
                tag = ",".join(f"{k}={v}" for k, v in r["hparams"].items()
                               if r["label"] != r["method"] and f"{k}=" in r["label"])
                if tag:
                    ax.annotate(tag, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    _finish_frontier(fig, ax, board, path, max(r["metrics"]["kl"]["mean"] for r in rows), f"{metric} (mean, 95% CI)",
                     f"{board['suite']}: {task} reward-KL frontier")
    return True


def _finish_frontier(fig: Any, ax: Any, board: dict[str, Any], path: Path, max_kl: float, ylabel: str,
                     title: str, **title_kwargs: Any) -> None:
    """The KL budget line (when in view), axis labels, grid and legend, then save and close."""
    budget = board.get("kl_budget")
    if budget is not None and budget <= max_kl * 1.5 + 1e-9:
        ax.axvline(budget, color="grey", linestyle="--", linewidth=1, label=f"KL budget ({budget})")
    ax.set_xlabel("KL(policy || reference), nats per sequence")
    ax.set_ylabel(ylabel)
    ax.set_title(title, **title_kwargs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="best")
    fig.tight_layout()
    _save(fig, path)
    _plt().close(fig)


def _frontier_curves_plot(board: dict[str, Any], task: str, path: Path) -> bool:
    curves = [f for f in board["frontiers"] if f["task"] == task and not f.get("reason") and f.get("points")]
    if not curves:
        return False
    metric = curves[0]["metric"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
    drawn_reference: set[str] = set()
    all_kl = [0.0]
    for i, curve in enumerate(sorted(curves, key=lambda f: f["label"])):
        color = palette[i % len(palette)]
        points = [p for p in curve["points"] if p.get("kl") is not None and p.get("value") is not None]
        xs, ys = [p["kl"] for p in points], [p["value"] for p in points]
        all_kl += xs

        def err(p: dict[str, Any], what: str) -> tuple[float, float]:
            ci = p.get(f"{what}_ci")
            return (p[what] - ci[0], ci[1] - p[what]) if ci else (0.0, 0.0)

        band = len(curve.get("seeds") or []) >= 2 and all(p.get("value_ci") for p in points)
        xerr = list(zip(*[err(p, "kl") for p in points]))
        yerr = None if band else list(zip(*[err(p, "value") for p in points]))  # the band shows it
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, color=color, marker="o", markersize=4, capsize=2,
                    linewidth=1.3, label=curve["label"])
        if band:
            ax.fill_between(xs, [p["value_ci"][0] for p in points], [p["value_ci"][1] for p in points],
                            color=color, alpha=0.12, linewidth=0)
        ref = next((p for p in points if p["kind"] == "reference"), None)
        if ref is not None and curve["model"] not in drawn_reference:
            drawn_reference.add(curve["model"])
            ax.plot([0.0], [ref["value"]], marker="*", markersize=14, color="black", linestyle="none",
                    label="reference" if len(drawn_reference) == 1 else None, zorder=5)
    for k in (board.get("kl_levels") or {}).get(task) or []:
        ax.axvline(k, color="grey", linestyle=":", linewidth=0.8)
    seeds = max(len(c.get("seeds") or []) for c in curves)
    _finish_frontier(fig, ax, board, path, max(all_kl),
                     f"{metric} (mean, 95% bootstrap CI{' over seeds and prompts' if seeds >= 2 else ''})",
                     f"{board['suite']}: {task} reward-KL frontiers (dotted: matched-KL levels)", fontsize=10)
    return True


def bars_plot(board: dict[str, Any], task: str, path: Path) -> bool:
    metrics = [m for m in metric_columns(board)
               if board.get("metrics", {}).get(m, {}).get("higher_is_better") is not None]
    rows = [r for r in _sorted_rows(board) if r["task"] == task]
    metrics = [m for m in metrics if any(m in r["metrics"] for r in rows)]
    if not metrics or not rows:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5.0, 4.2 * len(metrics)), 0.35 * len(rows) + 1.8),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        present = [r for r in rows if metric in r["metrics"] and r["metrics"][metric]["mean"] is not None]
        labels = [r["label"] + (" (paper)" if r["kind"] == "paper" and "paper" not in r["label"] else "")
                  for r in present]
        means = [r["metrics"][metric]["mean"] for r in present]
        errs = list(zip(*[_err(r["metrics"][metric]) for r in present])) or None
        colors = ["black" if r["kind"] == "reference" else ("#bbbbbb" if r["kind"] == "paper" else "#1f77b4")
                  for r in present]
        ax.barh(range(len(present)), means, xerr=errs, color=colors, capsize=3)
        ax.set_yticks(range(len(present)), labels, fontsize=8)
        ax.invert_yaxis()
        arrow = "higher is better" if board["metrics"][metric]["higher_is_better"] else "lower is better"
        ax.set_title(f"{metric} ({arrow})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{board['suite']}: {task}, mean and 95% CI", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------
# html

_SORT_JS = """
// for the screenshot test and for readers: how many embedded plots actually decoded
window.addEventListener('load', () => {
  document.body.dataset.imagesLoaded = [...document.images].filter(i => i.naturalWidth > 0).length;
});
document.querySelectorAll('table.board th').forEach((th, col) => th.addEventListener('click', () => {
  const table = th.closest('table'), body = table.tBodies[0];
  const asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
  const num = s => { const v = parseFloat(s); return isNaN(v) ? null : v; };
  [...body.rows].sort((a, b) => {
    const x = a.cells[col].innerText, y = b.cells[col].innerText, nx = num(x), ny = num(y);
    const c = (nx !== null && ny !== null) ? nx - ny : x.localeCompare(y);
    return asc ? c : -c;
  }).forEach(r => body.appendChild(r));
}));
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.board { border-collapse: collapse; font-size: 13px; }
table.board th, table.board td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
table.board th { background: #f0f0f0; cursor: pointer; user-select: none; }
tr.reference td { font-weight: bold; }
tr.paper td { color: #777; font-style: italic; }
.flag { color: #b00; }
tr.better td { background: #e6f4e6; }
tr.worse td { background: #fbe9e9; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def html_page(board: dict[str, Any], plots: dict[str, bytes]) -> str:
    header, rows = table_rows(board)
    kinds = [r["kind"] for r in _sorted_rows(board)]
    esc = html.escape
    parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>pobench leaderboard: {esc(board['suite'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>pobench leaderboard: {esc(board['suite'])}</h1>",
             "<p>Mean [95% CI]; CIs over seeds when a row has several, else over prompts "
             "(metrics of eval_tasks: &plusmn;1.96 &times; the evaluator's standard error over its items). "
             "<em>vs reference</em> is the paired per-prompt difference to the reference policy. "
             "Italic rows are published numbers, not measured here. Click a column header to sort.</p>",
             "<table class='board' id='leaderboard'><thead><tr>"
             + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for kind, row in zip(kinds, rows):
        cells = "".join(f"<td class='flag'>{esc(c)}</td>" if i == len(row) - 1 and c else f"<td>{esc(c)}</td>"
                        for i, c in enumerate(row))
        parts.append(f"<tr class='{kind}'>{cells}</tr>")
    parts.append("</tbody></table>")
    facts_header, facts = facts_rows(board)
    if facts:
        parts.append(f"<h2>What each row was computed from</h2><p>{esc(FACTS_CAPTION)}</p>"
                     "<table class='board facts' id='facts'><thead><tr>"
                     + "".join(f"<th>{esc(h)}</th>" for h in facts_header) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in facts]
        parts.append("</tbody></table>")
    for section in matched_sections(board):
        parts.append(f"<h2>{esc(section['title'])}</h2><p>{esc(section['caption'])}</p>")
        if section["rows"]:
            parts.append(f"<table class='board matched' id='{esc(section['id'])}'><thead><tr>"
                         + "".join(f"<th>{esc(h)}</th>" for h in section["header"]) + "</tr></thead><tbody>")
            for row in section["rows"]:
                verdict = row[-1].removesuffix(" (*)") if section["id"] == "contrasts" else ""
                css = {"better": "better", "worse": "worse"}.get(verdict, "matched-row")
                parts.append(f"<tr class='{css}'>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
            parts.append("</tbody></table>")
        if section["notes"]:
            parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in section["notes"]) + "</ul>")
    for name, data in plots.items():
        parts.append(f"<h2>{esc(name)}</h2><img alt='{esc(name)}' src='data:image/png;base64,"
                     f"{base64.b64encode(data).decode()}'>")
    manifest = board.get("manifest", {})
    git = manifest.get("git", {})
    parts.append(f"<h2>Provenance</h2><p>config hash <code>{esc(str(board.get('config_hash')))}</code>, "
                 f"git <code>{esc(str(git.get('sha')))}</code>{' (dirty)' if git.get('dirty') else ''}, "
                 f"created {esc(str(board.get('created_at')))}; packages: "
                 + ", ".join(f"{esc(k)} {esc(v)}" for k, v in manifest.get("packages", {}).items())
                 + f"; hardware: {esc(str(manifest.get('hardware', {}).get('cpu_model', '')))} "
                 f"({esc(str(manifest.get('hardware', {}).get('cpu_count', '')))} CPUs)</p>")
    parts.append(f"<script>{_SORT_JS}</script></body></html>")
    return "\n".join(parts)


def write_all(board: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write every leaderboard file under ``out_dir``; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    atomic_write_json(out_dir / "leaderboard.json", board)
    written["json"] = out_dir / "leaderboard.json"
    write_csv(board, out_dir / "leaderboard.csv")
    written["csv"] = out_dir / "leaderboard.csv"
    atomic_write_text(out_dir / "leaderboard.md", markdown(board))
    written["md"] = out_dir / "leaderboard.md"
    plots: dict[str, bytes] = {}
    for task in sorted({r["task"] for r in board["rows"]}):
        for kind, fn in (("frontier", frontier_plot), ("bars", bars_plot)):
            path = out_dir / f"{kind}_{task}.png"
            if fn(board, task, path):
                plots[f"{kind} ({task})"] = path.read_bytes()
                written[f"{kind}_{task}"] = path
    atomic_write_text(out_dir / "leaderboard.html", html_page(board, plots))
    written["html"] = out_dir / "leaderboard.html"
    return written
