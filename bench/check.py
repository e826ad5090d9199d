"""``pobench check``: compare a current leaderboard with a baseline and fail on regressions, with a
known family-wise false-alarm rate.

One test per (row, metric) of the baseline (measured and reference rows; paper rows never), on
``delta``: the change in the good direction (current - baseline for higher-is-better metrics, the
negative for lower-is-better ones such as KL). Checked by default: every metric with a direction,
KL included (a rise of KL beyond tolerance is a regression); ``metrics=`` names the ones to check.

The test, from the best evidence both sides have:

* **paired over prompts** (both leaderboards have their per-sample files, ``runs/*.samples.jsonl.gz``,
  and share a seed): per prompt, the mean of the metric over that prompt's samples; ``delta`` is the
  mean over the shared prompts of current - baseline. Same prompts and same sampling seed on both
  sides, so the prompt effects cancel and the sampling noise is coupled (the samplers draw from the
  same uniforms). p from a t-test over prompts (``paired t``);
* **seed-aware** when the shared seeds are several: with >= 3 shared seeds, a t-test over seeds of
  the per-seed paired differences (``seed t``: the unit of replication is the training seed, so a
  code change that re-rolls training noise is judged against the seeds' spread); with 2, the
  hierarchical bootstrap of ``bench.stats`` (seeds, then one shared prompt draw) of the paired
  difference (``bootstrap``; two seeds barely estimate the seed variance, so it can be too narrow
  when seeds dominate: run >= 3). Metrics without per-prompt values (corpus-level, e.g. distinct-n)
  get the seed t over the rows' per-seed values when >= 3 seeds are shared;
* **unpaired** otherwise (no per-sample files on one side, no shared seed): z = delta / sqrt(se_b^2 +
  se_c^2) from the leaderboards' standard errors, as the check did before; the output says which
  rows fell back and why. A metric with no standard error on either side (one seed's distinct-n) is
  reported as ``no-se`` and not tested unless a slack is given or it is named in ``metrics=``.

Tolerance: ``tol = abs_tol + rel_tol * |baseline| (+ kl_tol for KL)``. The hypotheses are
H0: true delta >= -tol against H1: true delta < -tol (one-sided), so a slack widens what counts as
"no regression" instead of being added to a noise band. Every test gives a one-sided p-value; Holm's
step-down over all tested (row x metric) pairs of the comparison controls the family-wise error:
a row regresses when its Holm-adjusted p < ``alpha`` (0.05). ``improved`` is the mirror test (H1:
delta > tol, Holm over the same family), reported, never a failure. A row or metric that
disappeared fails (``allow_missing`` turns that off).

With one seed the paired test covers evaluation noise (which prompts, which samples) given the two
trained policies; training-to-training variation is not in it (one seed cannot estimate it), so a
change that re-rolls training can be flagged although the method did not get worse: use >= 3 seeds
for that, or a slack.

Error rates (``simulate_error_rates``, ``pobench check --simulate N``): null comparisons built from
the baseline's stored samples, sharing every random choice across rows and metrics (which keeps the
dependence between rows on shared prompts and sampling seeds, and between a sample's reward and KL).

* ``sample split`` (>= 2 samples per prompt): per prompt (and seed), its samples are split at random
  in two halves, and the simulated current is ``baseline + c * (mean of one half - mean of the
  other)`` with c chosen so the added noise has the variance of the difference of two independent
  k-sample means (c = sqrt((2/k) / (1/|A| + 1/|B|)); 1/sqrt(2) for k = 2). Samples of one prompt and
  seed are exchangeable draws of the same policy, so each per-prompt difference has mean zero and a
  symmetric distribution: a valid null with the data's own distributions (ties, heavy tails), and
  independent sampling noise (no coupling through the sampling seed: noisier than a real re-run).
* ``prompt split`` (one sample per prompt): the prompts are shuffled into pairs (a_i, b_i); the
  baseline is the a_i's values and the current the partners' values under the a_i's ids. Which
  prompt of a pair lands on which side is random, so the n/2 paired differences are exchangeable,
  symmetric and mean-zero: a valid null, but one that carries the prompt-to-prompt spread a real
  comparison on the same prompts cancels, so its power is a floor.

Power: the same draws with the injected row's primary metric shifted by a fraction of its paired
gain over the reference. ``checkpoint_contrast`` adds a real one: the row against an earlier
checkpoint of the same training run on the same sampling seed, whose per-prompt spread is the noise
of a real policy change with the sampler's coupling (what both simulated nulls leave out).
"""
from __future__ import annotations

import gzip
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as _stats
from scipy.special import ndtr, stdtr

from bench.leaderboard import point_id
from bench.stats import holm, resample

# point id -> seed -> metric -> prompt id -> per-sample values (in sample-index order)
Samples = dict[str, dict[Any, dict[str, dict[str, list[float]]]]]
# point id -> seed -> metric -> prompt id -> per-prompt mean
Evidence = Mapping[str, Mapping[Any, Mapping[str, Mapping[str, float]]]]

N_BOOT = 2000


@dataclass
class Comparison:
    row: str
    metric: str
    baseline: float | None
    current: float | None
    delta: float | None  # in the good direction (paired mean difference when paired)
    tolerance: float | None  # the slack: abs_tol + rel_tol * |baseline| (+ kl_tol)
    status: str  # ok | improved | REGRESSED | missing | info | no-se
    se: float | None = None
    p_value: float | None = None  # one-sided, "worse than -tolerance"
    p_holm: float | None = None
    test: str = ""  # paired t / seed t / bootstrap / unpaired z / ...
    n: int | None = None  # prompts (paired t, bootstrap) or seeds (seed t)
    p_better: float | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSED", "missing")


@dataclass
class _Test:
    estimate: float
    se: float | None
    p_worse: float
    p_better: float
    test: str
    n: int | None


# ----------------------------------------------------------------------------------------------
# evidence: the per-sample files next to a leaderboard

def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def load_samples(results_dir: str | Path) -> tuple[Samples, list[str]]:
    """Per-sample values of every run of ``results_dir/runs/`` (records + ``.samples.jsonl.gz``).
    Returns the values and notes for runs without a samples file (those rows are compared unpaired)."""
    results_dir = Path(results_dir)
    out: Samples = {}
    notes: list[str] = []
    for path in sorted((results_dir / "runs").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            point = point_id(record["row_id"], record.get("step"))
            seed = record["seed"]
        except (json.JSONDecodeError, KeyError, TypeError):
            notes.append(f"{path.name}: not a run record")
            continue
        evidence = path.with_name(path.name[:-len(".json")] + ".samples.jsonl.gz")
        if not evidence.is_file():
            notes.append(f"{point} seed {seed}: no per-sample file")
            continue
        by_metric: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
        for i, line in enumerate(gzip.decompress(evidence.read_bytes()).decode().split("\n")):
            if not line:
                continue
            row = json.loads(line)
            for metric, value in (row.get("scores") or {}).items():
                if _numeric(value):
                    by_metric[metric][str(row["prompt_id"])].append((int(row.get("index", i)), float(value)))
        for row in record.get("per_pair") or []:  # metrics computed on held-out pairs: a pair is their unit
            for metric, value in row.items():
                if metric != "prompt_id" and _numeric(value):
                    by_metric[metric][str(row["prompt_id"])].append((0, float(value)))
        out.setdefault(point, {})[seed] = {
            m: {p: [v for _, v in sorted(vals)] for p, vals in prompts.items()} for m, prompts in by_metric.items()}
    return out, notes


def evidence_of(samples: Samples) -> dict[str, dict[Any, dict[str, dict[str, float]]]]:
    """Per-prompt means of :func:`load_samples` output."""
    return {point: {seed: {m: {p: float(np.mean(v)) for p, v in prompts.items() if v} for m, prompts in metrics.items()}
                    for seed, metrics in seeds.items()} for point, seeds in samples.items()}


def results_dir_of(leaderboard_path: str | Path) -> Path:
    path = Path(leaderboard_path)
    return path if path.is_dir() else path.parent


# ----------------------------------------------------------------------------------------------
# the tests

def _t_test(values: np.ndarray, tol: float, label: str) -> _Test:
    n = int(values.size)
    mean = float(values.mean())
    if np.ptp(values) <= 1e-12 * max(1.0, float(np.abs(values).max())):  # no spread (an identical re-run): exact
        return _Test(mean, 0.0, 0.0 if mean + tol < 0 else 1.0, 0.0 if mean - tol > 0 else 1.0,
                     f"{label}, no spread", n)
    se = float(values.std(ddof=1) / math.sqrt(n))
    # Student t cdf: scipy.special.stdtr (a ufunc; a frozen scipy.stats.t costs ~1 ms to build)
    return _Test(mean, se, float(stdtr(n - 1, (mean + tol) / se)), float(stdtr(n - 1, -(mean - tol) / se)), label, n)


def _paired_test(base: Mapping[Any, Mapping[str, float]], cur: Mapping[Any, Mapping[str, float]], sign: float,
                 tol: float, *, n_boot: int, boot_seed: int) -> _Test | None:
    """``base``/``cur``: seed -> prompt -> per-prompt mean. None when no seed has >= 2 shared prompts."""
    diffs: dict[Any, dict[str, float]] = {}
    for seed in sorted(base.keys() & cur.keys(), key=lambda s: (str(type(s)), s)):
        b, c = base[seed], cur[seed]
        shared = sorted(b.keys() & c.keys())
        if len(shared) >= 2:
            diffs[seed] = {p: sign * (c[p] - b[p]) for p in shared}
    if not diffs:
        return None
    if len(diffs) == 1:
        (seed, d), = diffs.items()
        return _t_test(np.array([d[p] for p in sorted(d)]), tol, "paired t")
    if len(diffs) >= 3:
        per_seed = np.array([float(np.mean(list(d.values()))) for d in diffs.values()])
        return _t_test(per_seed, tol, "seed t (paired)")
    res = resample({"d": diffs}, n_boot=n_boot, seed=boot_seed)
    draws = res.draws["d"][np.isfinite(res.draws["d"])]
    estimate = res.observed["d"]
    if draws.size < 2 or np.ptp(draws) <= 1e-12 * max(1.0, float(np.abs(draws).max())):
        return _Test(float(estimate), 0.0, 0.0 if estimate + tol < 0 else 1.0, 0.0 if estimate - tol > 0 else 1.0,
                     "bootstrap (2 seeds), no spread", res.n_prompts)
    p_worse = (1 + int((draws >= -tol).sum())) / (draws.size + 1)
    p_better = (1 + int((draws <= tol).sum())) / (draws.size + 1)
    return _Test(float(estimate), float(draws.std(ddof=1)), min(1.0, p_worse), min(1.0, p_better),
                 "bootstrap (2 seeds)", res.n_prompts)


def _per_seed(row: Mapping[str, Any], metric: str) -> dict[Any, float]:
    values = row["metrics"].get(metric, {}).get("per_seed") or []
    seeds = row.get("seeds") or []
    if len(values) != len(seeds):
        return {}
    return {s: float(v) for s, v in zip(seeds, values) if _numeric(v)}


def _unpaired_test(delta: float, se_b: float | None, se_c: float | None, tol: float) -> _Test | None:
    se = math.sqrt((se_b or 0.0) ** 2 + (se_c or 0.0) ** 2)
    if se == 0:
        return None
    return _Test(delta, se, float(ndtr((delta + tol) / se)), float(ndtr(-(delta - tol) / se)), "unpaired z", None)


def compare(baseline: dict[str, Any], current: dict[str, Any], *, alpha: float = 0.05, abs_tol: float = 0.0,
            rel_tol: float = 0.0, kl_tol: float = 0.0, metrics: list[str] | None = None,
            allow_missing: bool = False, baseline_evidence: Evidence | None = None,
            current_evidence: Evidence | None = None, n_boot: int = N_BOOT, boot_seed: int = 0
            ) -> list[Comparison]:
    """Compare two leaderboards (see the module docstring). ``*_evidence``: per-prompt means of each side
    (:func:`evidence_of` of :func:`load_samples`); without them every test is unpaired."""
    directions = {**{k: v.get("higher_is_better") for k, v in baseline.get("metrics", {}).items()},
                  **{k: v.get("higher_is_better") for k, v in current.get("metrics", {}).items()}}
    current_rows = {r["id"]: r for r in current["rows"] if r["kind"] != "paper"}
    base_ev, cur_ev = baseline_evidence or {}, current_evidence or {}
    out: list[Comparison] = []
    for row in baseline["rows"]:
        if row["kind"] == "paper":
            continue
        cur = current_rows.get(row["id"])
        for metric, base in row["metrics"].items():
            direction = directions.get(metric)
            named = bool(metrics) and metric in metrics
            checked = named if metrics else direction is not None
            if named and direction is None:
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
            tol = abs_tol + rel_tol * abs(b) + (kl_tol if metric == "kl" else 0.0)
            if not checked:
                out.append(Comparison(row["id"], metric, b, c, sign * (c - b), tol, "info"))
                continue
            b_ev = {s: m[metric] for s, m in base_ev.get(row["id"], {}).items() if metric in m}
            c_ev = {s: m[metric] for s, m in cur_ev.get(row["id"], {}).items() if metric in m}
            test = _paired_test(b_ev, c_ev, sign, tol, n_boot=n_boot, boot_seed=boot_seed) if b_ev and c_ev else None
            if test is None:
                b_seeds, c_seeds = _per_seed(row, metric), _per_seed(cur, metric)
                shared = sorted(b_seeds.keys() & c_seeds.keys(), key=lambda s: (str(type(s)), s))
                if len(shared) >= 3:
                    test = _t_test(np.array([sign * (c_seeds[s] - b_seeds[s]) for s in shared]), tol, "seed t")
            if test is None:
                delta = sign * (c - b)
                test = _unpaired_test(delta, base.get("se"), cur["metrics"][metric].get("se"), tol)
                if test is None:  # no noise estimate on either side: not in the family without a slack
                    if tol == 0 and not named:
                        out.append(Comparison(row["id"], metric, b, c, delta, tol, "no-se" if delta != 0 else "ok",
                                              test="no se"))
                        continue
                    test = _Test(delta, 0.0, 0.0 if delta + tol < 0 else 1.0, 0.0 if delta - tol > 0 else 1.0,
                                 "no se: slack only", None)
                elif row["id"] not in base_ev or row["id"] not in cur_ev:
                    test.test = "unpaired z (no samples)"
                elif not b_ev or not c_ev:
                    test.test = "unpaired z (corpus-level)"
                else:
                    test.test = "unpaired z (no shared seed)"
            out.append(Comparison(row["id"], metric, b, c, test.estimate, tol, "pending", se=test.se,
                                  p_value=test.p_worse, test=test.test, n=test.n, p_better=test.p_better))
    # exact comparisons (no spread: e.g. the reference's KL, or an identical re-run of a row) carry no
    # sampling error: decided as they are, outside the Holm family
    pending = [c for c in out if c.status == "pending" and c.se != 0]
    worse = holm([c.p_value for c in pending])
    better = holm([c.p_better for c in pending])
    for c, p_w, p_b in zip(pending, worse, better):
        c.p_holm = p_w
        c.status = "REGRESSED" if p_w < alpha else "improved" if p_b < alpha else "ok"
    for c in out:
        if c.status == "pending":
            c.p_holm = c.p_value
            c.status = "REGRESSED" if c.p_value < alpha else "improved" if c.p_better < alpha else "ok"
    return out


def family_size(comparisons: Sequence[Comparison]) -> int:
    """How many tests Holm's correction counted (exact comparisons are not among them)."""
    return sum(c.p_holm is not None and c.se != 0 for c in comparisons)


def format_table(comparisons: list[Comparison], only_moved: bool = False) -> str:
    header = ["row", "metric", "baseline", "current", "delta(+good)", "se", "tol", "p(Holm)", "test", "status"]
    lines = []
    for c in comparisons:
        if only_moved and c.status in ("ok", "info"):
            continue
        f = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append([c.row, c.metric, f(c.baseline), f(c.current), "" if c.delta is None else f"{c.delta:+.4f}",
                      f(c.se), f(c.tolerance), "" if c.p_holm is None else f"{c.p_holm:.3g}",
                      c.test + ("" if c.n is None else f" n={c.n}"), c.status])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    render = lambda cells: "  ".join(cell.ljust(w) for cell, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), render(["-" * w for w in widths])] + [render(l) for l in lines])


# ----------------------------------------------------------------------------------------------
# measured error rates

def _clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(_stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(_stats.beta.ppf(1 - a, k + 1, n - k))
    return [lo, hi]


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"rate": k / n if n else None, "count": k, "n": n, "ci95": _clopper_pearson(k, n) if n else None}


class _NullSampler:
    """Null (baseline, current) evidence pairs from stored samples (see the module docstring).

    ``sample split`` (every prompt has >= 2 samples): per (seed, prompt) a random half/half split of its
    samples, shared by every row and metric; baseline = the prompt's mean, current = mean + c_k (mean A -
    mean B). ``prompt split`` (one sample per prompt): per seed the prompts are shuffled into pairs
    (a_i, b_i), shared by every row and metric; baseline = the values of the a_i, current = the values
    of their partners b_i under the a_i's ids."""

    def __init__(self, samples: Samples, points: Sequence[str], metrics_of: Mapping[str, Sequence[str]],
                 scheme: str | None = None):
        self.blocks = []  # (point, seed, metric, prompts, values (P, k), k, index in the seed's universe)
        self.universe: dict[Any, dict[str, int]] = defaultdict(dict)  # seed -> prompt -> index
        self.kmax, self.kmin = 1, None
        for point in points:
            for seed, by_metric in samples.get(point, {}).items():
                for metric in metrics_of[point]:
                    prompts = by_metric.get(metric)
                    if not prompts:
                        continue
                    by_k: dict[int, list[str]] = defaultdict(list)
                    for p, vals in prompts.items():
                        by_k[len(vals)].append(p)
                    for k, ps in by_k.items():
                        ps = sorted(ps)
                        values = np.array([prompts[p] for p in ps], dtype=float)
                        idx = np.array([self.universe[seed].setdefault(p, len(self.universe[seed])) for p in ps])
                        self.blocks.append((point, seed, metric, ps, values, k, idx))
                        self.kmax = max(self.kmax, k)
                        self.kmin = k if self.kmin is None else min(self.kmin, k)
        self.base = evidence_of({pt: {s: {m: samples[pt][s][m] for m in metrics_of[pt] if m in samples[pt][s]}
                                      for s in samples[pt]} for pt in points if pt in samples})
        self.scheme = scheme or ("sample split" if (self.kmin or 0) >= 2 else "prompt split")
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown null scheme {self.scheme!r} (one of {', '.join(SCHEMES)})")
        if self.scheme == "sample split" and (self.kmin or 0) < 2:
            raise ValueError("the sample split needs >= 2 samples per prompt; use the prompt split")
        self.prompts = {seed: sorted(u, key=u.get) for seed, u in self.universe.items()}

    def draw(self, rng: np.random.Generator) -> tuple[dict, dict]:
        """One null (baseline, current) pair of evidence mappings."""
        if self.scheme == "prompt split":
            return self._prompt_split(rng)
        keys = {seed: rng.random((len(prompts), self.kmax)) for seed, prompts in self.universe.items()}
        cur: dict[str, dict[Any, dict[str, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
        for point, seed, metric, ps, values, k, idx in self.blocks:
            if k < 2:
                continue
            order = np.argsort(keys[seed][idx, :k], axis=1)
            half = k // 2
            a = np.take_along_axis(values, order[:, :half], axis=1).mean(1)
            b = np.take_along_axis(values, order[:, half:], axis=1).mean(1)
            scale = math.sqrt((2 / k) / (1 / half + 1 / (k - half)))
            mean = values.mean(1)
            noisy = mean + scale * (a - b)
            target = cur[point][seed].setdefault(metric, {})
            target.update(zip(ps, noisy.tolist()))
        return self.base, cur

    def _prompt_split(self, rng: np.random.Generator) -> tuple[dict, dict]:
        pairs = {}
        for seed, prompts in self.prompts.items():
            order = rng.permutation(len(prompts))
            half = len(prompts) // 2
            pairs[seed] = [(prompts[order[i]], prompts[order[half + i]]) for i in range(half)]
        base: dict[str, dict[Any, dict[str, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
        cur: dict[str, dict[Any, dict[str, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
        for point, by_seed in self.base.items():
            for seed, by_metric in by_seed.items():
                for metric, values in by_metric.items():
                    shared = [(a, b) for a, b in pairs[seed] if a in values and b in values]
                    base[point][seed][metric] = {a: values[a] for a, _ in shared}
                    cur[point][seed][metric] = {a: values[b] for a, b in shared}
        return base, cur


SCHEMES = {
    "sample split": ("Per (seed, prompt) a random half/half split of its stored samples, shared by every row and "
                     "metric; current = baseline per-prompt mean + c_k (mean A - mean B), c_k = "
                     "sqrt((2/k)/(1/|A|+1/|B|)): mean-zero symmetric per-prompt differences with the variance of two "
                     "independent k-sample means (no sampling-seed coupling; training not re-rolled)."),
    "prompt split": ("One sample per prompt: per seed the prompts are shuffled into pairs (a_i, b_i), shared by every "
                     "row and metric; baseline = the a_i's values, current = their partners' values under the a_i's "
                     "ids: n/2 exchangeable, mean-zero symmetric paired differences that also carry the prompt-to-"
                     "prompt spread (far noisier than a re-run on the same prompts: its power is a floor)."),
}


def _legacy_regressed(base: Mapping[Any, Mapping[str, float]], cur: Mapping[Any, Mapping[str, float]],
                      sign: float, z: float = 1.959963984540054) -> bool:
    """The check before this one: unpaired, delta < -z * sqrt(se_b^2 + se_c^2) per row at 2.5% one-sided,
    se over prompts (one seed) or over seeds, no multiplicity control."""
    seeds = sorted(base.keys() & cur.keys(), key=lambda s: (str(type(s)), s))
    if not seeds:
        return False
    if len(seeds) == 1:
        b, c = np.array(list(base[seeds[0]].values())), np.array(list(cur[seeds[0]].values()))
    else:
        b = np.array([np.mean(list(base[s].values())) for s in seeds])
        c = np.array([np.mean(list(cur[s].values())) for s in seeds])
    se = math.sqrt(b.var(ddof=1) / b.size + c.var(ddof=1) / c.size)
    return bool(sign * (c.mean() - b.mean()) < -z * se)


def default_inject_row(board: dict[str, Any]) -> str | None:
    """The final point of the first ``dpo`` configuration (the halved-DPO-gain power scenario)."""
    rows = [r for r in board["rows"] if r["kind"] == "measured" and r.get("method") == "dpo"]
    if not rows:
        return None
    first = rows[0].get("row_id", rows[0]["id"])
    mine = [r for r in rows if r.get("row_id", r["id"]) == first]
    final = [r for r in mine if r.get("step") is None]  # the configuration's only point
    return final[0]["id"] if final else max(mine, key=lambda r: r["step"])["id"]


def paired_gain(board: dict[str, Any], evidence: Evidence, row_id: str, metric: str) -> dict[str, Any] | None:
    """Mean over shared seeds of the mean over shared prompts of (row - reference) on ``metric``, in the
    good direction, with the t standard error over prompts (one seed) or seeds."""
    row = next((r for r in board["rows"] if r["id"] == row_id), None)
    if row is None:
        return None
    ref = next((r for r in board["rows"] if r["kind"] == "reference" and r["task"] == row["task"]
                and r["model"] == row["model"]), None)
    if ref is None:
        return None
    sign = -1.0 if board.get("metrics", {}).get(metric, {}).get("higher_is_better") is False else 1.0
    mine, theirs = evidence.get(row_id, {}), evidence.get(ref["id"], {})
    per_seed, per_prompt = [], []
    for seed in sorted(mine.keys() & theirs.keys(), key=lambda s: (str(type(s)), s)):
        a, b = mine[seed].get(metric, {}), theirs[seed].get(metric, {})
        d = [sign * (a[p] - b[p]) for p in sorted(a.keys() & b.keys())]
        if d:
            per_seed.append(float(np.mean(d)))
            per_prompt = d
    if not per_seed:
        return None
    values = np.array(per_seed if len(per_seed) > 1 else per_prompt)
    return {"row": row_id, "reference": ref["id"], "metric": metric, "gain": float(np.mean(per_seed)),
            "se": float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else None,
            "over": "seeds" if len(per_seed) > 1 else "prompts", "n": int(values.size)}


def simulate_error_rates(board: dict[str, Any], samples: Samples, *, n_null: int = 200, alpha: float = 0.05,
                         abs_tol: float = 0.0, rel_tol: float = 0.0, kl_tol: float = 0.0,
                         metrics: list[str] | None = None, inject_row: str | None = None,
                         fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0), seed: int = 0,
                         n_boot: int = 500, scheme: str | None = None) -> dict[str, Any]:
    """False-alarm rate of :func:`compare` over ``n_null`` simulated null comparisons of ``board`` with
    itself (the scheme of the module docstring), and its power to flag the ``inject_row``'s gain over
    the reference cut by each of ``fractions`` (0.5: the halved gain). Rows without stored samples
    are left out of the simulation (listed under ``left_out``). ``scheme``: "sample split" or "prompt
    split" (default: the sample split when every prompt has >= 2 samples)."""
    rows = [r for r in board["rows"] if r["kind"] != "paper"]
    kept = [r for r in rows if r["id"] in samples]
    sub = {**board, "rows": kept}
    metrics_of = {r["id"]: list(r["metrics"]) for r in kept}
    sampler = _NullSampler(samples, [r["id"] for r in kept], metrics_of, scheme=scheme)
    full = sampler.base
    directions = {k: v.get("higher_is_better") for k, v in board.get("metrics", {}).items()}
    kw = dict(alpha=alpha, abs_tol=abs_tol, rel_tol=rel_tol, kl_tol=kl_tol, metrics=metrics, n_boot=n_boot)
    inject_row = inject_row or default_inject_row(board)
    inject_task = next((r["task"] for r in kept if r["id"] == inject_row), None)
    primary = (board.get("primary_metric") or {}).get(inject_task, "reward") if inject_task else None
    gain = paired_gain(board, full, inject_row, primary) if inject_row and primary else None
    sign = -1.0 if directions.get(primary) is False else 1.0
    drops = [(f, f * abs(gain["gain"])) for f in fractions] if gain else []

    family_sizes, null_fail, legacy_fail = [], 0, 0
    by_test: dict[str, int] = defaultdict(int)
    power = {f: [0, 0, 0] for f, _ in drops}  # flagged, any failure, legacy flagged
    target_se = []
    legacy_checked = [(r["id"], m) for r in kept for m in r["metrics"]
                      if directions.get(m) is not None and m != "kl" and (not metrics or m in metrics)]
    for rep in range(n_null):
        rng = np.random.default_rng([seed, rep])
        base, cur = sampler.draw(rng)
        comps = compare(sub, sub, baseline_evidence=base, current_evidence=cur, boot_seed=rep, **kw)
        family_sizes.append(family_size(comps))
        failed = [c for c in comps if c.failed]
        null_fail += bool(failed)
        for c in failed:
            by_test[f"{c.row} {c.metric}"] += 1
        legacy_fail += any(_legacy_regressed({s: v[m] for s, v in base[r].items() if m in v},
                                             {s: v[m] for s, v in cur[r].items() if m in v},
                                             -1.0 if directions.get(m) is False else 1.0)
                           for r, m in legacy_checked if r in cur)
        for c in comps:
            if c.row == inject_row and c.metric == primary and c.se is not None:
                target_se.append(c.se)
        for f, drop in drops:
            shifted = {pt: {s: dict(ms) for s, ms in seeds.items()} for pt, seeds in cur.items()}
            for s, ms in shifted.get(inject_row, {}).items():
                if primary in ms:
                    ms[primary] = {p: v - sign * drop for p, v in ms[primary].items()}
            comps = compare(sub, sub, baseline_evidence=base, current_evidence=shifted, boot_seed=rep, **kw)
            hit = any(c.row == inject_row and c.metric == primary and c.status == "REGRESSED" for c in comps)
            power[f][0] += hit
            power[f][1] += any(c.failed for c in comps)
            power[f][2] += _legacy_regressed({s: v[primary] for s, v in base[inject_row].items() if primary in v},
                                             {s: v[primary] for s, v in shifted[inject_row].items() if primary in v},
                                             sign)
    n_prompts = {s: len(p) for s, p in sampler.universe.items()}
    ks = sorted({k for *_, k, _ in sampler.blocks})
    report: dict[str, Any] = {
        "schema": "pobench.check_error_rates/1",
        "suite": board.get("suite"), "config_hash": board.get("config_hash"),
        "scheme": sampler.scheme,
        "scheme_text": SCHEMES[sampler.scheme] + (" Power: the same draws with the injected row's primary metric "
                                                  "shifted down by fraction x its paired gain over the reference."),
        "alpha": alpha, "n_null": n_null, "seed": seed, "tolerances": {"abs": abs_tol, "rel": rel_tol, "kl": kl_tol},
        "data": {"rows": [r["id"] for r in kept], "left_out": [r["id"] for r in rows if r["id"] not in samples],
                 "prompts_per_seed": n_prompts, "samples_per_prompt": ks,
                 "family_size": {"min": min(family_sizes, default=0), "max": max(family_sizes, default=0)}},
        "false_alarm": {**_rate(null_fail, n_null), "target": 0.05,
                        "meets_target": null_fail / n_null <= 0.05 if n_null else None,
                        "by_test": dict(sorted(by_test.items()))},
        "legacy_false_alarm": {**_rate(legacy_fail, n_null),
                               "rule": "unpaired, each row at 2.5% one-sided, reward-like metrics only, no Holm"},
    }
    if gain:
        curve = [{"fraction": f, "drop": drop, "power": _rate(power[f][0], n_null),
                  "any_failure": power[f][1] / n_null, "legacy_power": power[f][2] / n_null} for f, drop in drops]
        half = next((c for c in curve if c["fraction"] == 0.5), None)
        report["power"] = {"row": inject_row, "metric": primary, "gain_over_reference": gain,
                           "paired_se_of_the_test": float(np.median(target_se)) if target_se else None,
                           "halved_gain": half, "target": 0.8,
                           "meets_target": half["power"]["rate"] >= 0.8 if half else None,
                           "curve": curve}
    else:
        report["power"] = {"row": inject_row, "note": "no row to inject into (no dpo row, or no reference to take "
                                                      "its gain from)"}
    if gain:
        contrast = checkpoint_contrast(board, full, inject_row, primary, family=max(family_sizes, default=1),
                                       alpha=alpha, drop=0.5 * abs(gain["gain"]))
        if contrast:
            report["power"]["checkpoint_contrast"] = contrast
    return report


def checkpoint_contrast(board: dict[str, Any], evidence: Evidence, row_id: str, metric: str, *, family: int,
                        alpha: float, drop: float) -> dict[str, Any] | None:
    """A real "less trained policy, same sampling seed" comparison: ``row_id`` (baseline) against an earlier
    checkpoint of the same configuration (current), paired over prompts on its shared seed. Its per-prompt
    differences show how noisy a real policy change is when the sampling seed is shared (the coupling the
    split-sample null leaves out), and give the power of the paired t at that noise for ``drop``: at least
    the power at the first Holm step (alpha / family), at most at alpha."""
    row = next((r for r in board["rows"] if r["id"] == row_id), None)
    if row is None or row.get("step") is None:
        return None
    earlier = [r for r in board["rows"] if r.get("row_id") == row.get("row_id") and r.get("step") is not None
               and r["step"] < row["step"]]
    if not earlier:
        return None
    other = max(earlier, key=lambda r: r["step"])
    sign = -1.0 if board.get("metrics", {}).get(metric, {}).get("higher_is_better") is False else 1.0
    mine, theirs = evidence.get(row_id, {}), evidence.get(other["id"], {})
    seeds = sorted(mine.keys() & theirs.keys(), key=lambda s: (str(type(s)), s))
    if not seeds:
        return None
    a, b = mine[seeds[0]].get(metric, {}), theirs[seeds[0]].get(metric, {})
    shared = sorted(a.keys() & b.keys())
    if len(shared) < 3:
        return None
    d = np.array([sign * (b[p] - a[p]) for p in shared])  # current (earlier checkpoint) - baseline
    n, sd = d.size, float(d.std(ddof=1))
    t_stat = float(d.mean() / (sd / math.sqrt(n))) if sd > 0 else None
    power = {}
    for name, level in (("at_alpha_over_family", alpha / max(family, 1)), ("at_alpha", alpha)):
        crit = float(_stats.t.ppf(1 - level, n - 1))
        power[name] = float(_stats.nct.sf(crit, n - 1, drop / (sd / math.sqrt(n)))) if sd > 0 else None
    gains = {r: paired_gain(board, evidence, r, metric) for r in (row_id, other["id"])}
    return {"baseline_row": row_id, "current_row": other["id"], "seed": seeds[0], "n_prompts": n,
            "gain_over_reference": {r: (g or {}).get("gain") for r, g in gains.items()},
            "paired_difference": float(d.mean()), "sd_per_prompt": sd, "t": t_stat,
            "p_one_sided": float(_stats.t.cdf(t_stat, n - 1)) if t_stat is not None else None,
            "power_for_halved_gain_at_this_noise": {"drop": drop, "family": family, **power}}


def summarize_real(comparisons: list[Comparison]) -> dict[str, Any]:
    """What a real comparison gave, for the error-rate report."""
    tested = [c for c in comparisons if c.p_holm is not None]
    return {"tests": len(tested), "holm_family": family_size(comparisons),
            "failed": [f"{c.row} {c.metric}" for c in comparisons if c.failed],
            "tests_by_kind": dict(sorted(_count(c.test for c in tested).items())),
            "min_p_holm": min((c.p_holm for c in tested), default=None),
            "max_abs_delta": max((abs(c.delta) for c in tested if c.delta is not None), default=None)}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for item in items:
        out[item] += 1
    return out
