"""``pobench check``: compare a current leaderboard with a baseline and fail on regressions.

For every measured row of the baseline and every metric with a direction, let ``delta`` be the
change in the good direction (current - baseline for higher-is-better metrics, the negative for
lower-is-better ones). The row regresses when

    delta < -(z * sqrt(se_baseline^2 + se_current^2) + abs_tol + rel_tol * |baseline|)

i.e. when the drop is larger than the two rows' combined sampling noise at the chosen confidence
(standard errors over seeds, or over prompts for single-seed rows, as stored in the leaderboard)
plus an optional fixed slack. Metrics without a direction (descriptive, e.g. entropy) and KL are
reported but never fail the check unless named in ``--metrics``. A metric with no standard error on
either side (a corpus-level value such as distinct-n from a single seed) has no statistical
tolerance: it is reported as ``no-se`` and does not fail unless a slack (``--abs-tol`` /
``--rel-tol``) is given or it is named in ``--metrics``; run several seeds to test it. A row or
metric that disappeared is a failure too (``--allow-missing`` turns that off).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy import stats as _stats


@dataclass
class Comparison:
    row: str
    metric: str
    baseline: float | None
    current: float | None
    delta: float | None  # in the good direction
    tolerance: float | None
    status: str  # ok | improved | REGRESSED | missing | info

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSED", "missing")


def compare(baseline: dict[str, Any], current: dict[str, Any], *, confidence: float = 0.95, abs_tol: float = 0.0,
            rel_tol: float = 0.0, metrics: list[str] | None = None, allow_missing: bool = False
            ) -> list[Comparison]:
    z = float(_stats.norm.ppf(0.5 + confidence / 2))
    directions = {**{k: v.get("higher_is_better") for k, v in baseline.get("metrics", {}).items()},
                  **{k: v.get("higher_is_better") for k, v in current.get("metrics", {}).items()}}
    current_rows = {r["id"]: r for r in current["rows"] if r["kind"] != "paper"}
    out: list[Comparison] = []
    for row in baseline["rows"]:
        if row["kind"] == "paper":
            continue
        cur = current_rows.get(row["id"])
        for metric, base in row["metrics"].items():
            direction = directions.get(metric)
            checked = (metric in metrics) if metrics else (direction is not None and metric != "kl")
            if metrics and direction is None:
                direction = True
            b = base.get("mean")
            if cur is None or metric not in cur["metrics"] or cur["metrics"][metric].get("mean") is None:
                status = "missing" if checked and not allow_missing else "info"
                out.append(Comparison(row["id"], metric, b, None, None, None, status))
                continue
            c = cur["metrics"][metric]["mean"]
            if b is None:
                out.append(Comparison(row["id"], metric, None, c, None, None, "info"))
                continue
            sign = 1.0 if direction is not False else -1.0
            delta = sign * (c - b)
            se_b, se_c = base.get("se") or 0.0, cur["metrics"][metric].get("se") or 0.0
            tolerance = z * math.sqrt(se_b ** 2 + se_c ** 2) + abs_tol + rel_tol * abs(b)
            if not checked:
                status = "info"
            elif tolerance == 0 and not (metrics and metric in metrics) and delta != 0:
                status = "no-se"  # no noise estimate and no slack: any change would "regress"
            elif delta < -tolerance:
                status = "REGRESSED"
            elif delta > tolerance:
                status = "improved"
            else:
                status = "ok"
            out.append(Comparison(row["id"], metric, b, c, delta, tolerance, status))
    return out


def format_table(comparisons: list[Comparison], only_moved: bool = False) -> str:
    header = ["row", "metric", "baseline", "current", "delta(+good)", "tolerance", "status"]
    lines = []
    for c in comparisons:
        if only_moved and c.status in ("ok", "info"):
            continue
        f = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append([c.row, c.metric, f(c.baseline), f(c.current),
                      "" if c.delta is None else f"{c.delta:+.4f}", f(c.tolerance), c.status])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    render = lambda cells: "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()
    return "\n".join([render(header), render(["-" * w for w in widths])] + [render(l) for l in lines])
