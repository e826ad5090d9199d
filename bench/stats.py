"""Statistics for "is method X better than DPO at matched KL?": pure numpy functions on per-prompt values.

Frontiers
    ``frontier(points)`` is the piecewise-linear reward-KL curve through a configuration's evaluated
    checkpoints (and the reference at KL 0). Points are **sorted by KL**; the training order is not
    used, so a run whose KL goes down and up again still gives one function of KL (a checkpoint that
    moved back towards the reference is simply an interior point). Points at the same KL are merged
    into their mean value; points with a missing or non-finite KL or value are dropped.
    ``value_at_kl(curve, k)`` interpolates linearly between the two points that bracket ``k`` and
    returns ``None`` ("not reached") outside ``[min KL, max KL]``: it never extrapolates.
    ``values_at_kl`` is the same rule on arrays (one curve per leading index: bootstrap resamples).

Hierarchical bootstrap
    Data: ``key -> seed -> {prompt_id: value}`` (a key is any hashable: e.g. (configuration, step,
    "kl")). Every resample draws, with replacement,

    * training seeds: within a *seed group* (by default the key's own seed tuple), one draw per group,
      so keys with the same seeds (methods trained on the same seeds, the reference sampled with the
      same seeds) share it and stay paired over seeds; a key averages over the drawn seeds it has;
    * prompts: ONE draw over the union of prompt ids, shared by every key and every seed (seeds and
      prompts are crossed: every seed is evaluated on the same prompts, and every method on the same
      prompts, so the pairing of methods on prompts is kept).

    A key's value in a resample is the mean over the drawn seeds of the mean over the drawn prompts
    (multiplicities counted); the point estimate is the same with every count 1 (mean over seeds of
    the per-seed prompt means). Any statistic of these per-key means (a callable taking the mapping
    key -> array of shape (B,), returning an array of shape (B,)) gets a percentile CI from the same
    draws: a row's mean, reward@KL=k of a configuration, a difference of two configurations at KL=k.
    With one seed (per group) the seed draw is the identity and it is a prompt bootstrap:
    ``ci_over`` says ``"prompts"``, otherwise ``"seeds and prompts"``.
    Resamples in which a statistic is undefined (NaN: e.g. a resampled frontier that stops short of
    k) are left out of the CI and the p-value; ``defined_frac`` reports how many were kept.

    Error rates (simulated null paired difference, 40 prompts, prompt SD 0.4, noise SD 0.3, 95%
    percentile CI, 100-200 datasets): coverage 96% with one seed; with seeds it depends on how much
    of the variance is seed-to-seed. Resampling both crossed factors counts the seed x prompt
    residual twice, so with no seed effect it is conservative (99% at 2-5 seeds); when seed
    variation dominates, a bootstrap over few seeds is too narrow (seed SD 0.1 at 3 seeds: 80-90%;
    0.3: 70-80% at 3 seeds, 65% at 2, 91% at 8). ``seed_var_share`` (variance of the statistic
    under the seed draws alone, every prompt once, over its full bootstrap variance; median ~0.2-0.3
    with no seed effect, ~0.9 when seeds dominate) says which regime a CI is in, and ``caution``
    flags a share >= 0.5 with <= 4 seeds. It is a regime indicator, not a per-interval guarantee:
    with 2-3 seeds the seed variance itself is barely estimable, so run more seeds.

p-values and multiple comparisons
    ``bootstrap_p_value(draws, null)``: two-sided, p = min(1, 2 * min(1 + #(d <= null), 1 + #(d >= null))
    / (B + 1)) over the B defined resamples (the +1 counts the observed data as one resample, so p is
    never 0; p < alpha when ``null`` lies outside the (1 - alpha) percentile interval, up to the +1).
    ``holm(p_values)``: Holm-Bonferroni step-down adjusted p-values (monotone, capped at 1).
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

DEFAULT_BOOT = 2000
SEED_DOMINATED = 0.5  # seed_var_share from which a CI over few seeds is flagged (``caution``)
FEW_SEEDS = 4


# ----------------------------------------------------------------------------------------------
# frontiers

class Curve(NamedTuple):
    """A reward-KL frontier: strictly increasing ``kl`` and the ``value`` at each."""

    kl: np.ndarray
    value: np.ndarray


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def frontier(points: Iterable[tuple[float, float]], reference: float | None = None) -> Curve:
    """The curve through ``(kl, value)`` points, sorted by KL, ties merged to their mean value.

    ``reference``: the reference policy's value, added as the point ``(0, reference)`` (a curve
    "from the reference"); alternatively pass that point among ``points``."""
    pts = [(float(k), float(v)) for k, v in points if _finite(k) and _finite(v)]
    if reference is not None and _finite(reference):
        pts.append((0.0, float(reference)))
    if not pts:
        return Curve(np.zeros(0), np.zeros(0))
    kl = np.array([p[0] for p in pts])
    value = np.array([p[1] for p in pts])
    uniq, inverse = np.unique(kl, return_inverse=True)
    sums = np.bincount(inverse, weights=value, minlength=len(uniq))
    counts = np.bincount(inverse, minlength=len(uniq))
    return Curve(uniq, sums / counts)


def values_at_kl(kl: np.ndarray, value: np.ndarray, k: float) -> np.ndarray:
    """Vectorised ``value_at_kl``: ``kl``/``value`` of shape (..., P) (P points per curve, any order,
    non-finite entries ignored); returns shape (...), NaN where the curve does not reach ``k``."""
    kl = np.asarray(kl, dtype=float)
    value = np.asarray(value, dtype=float)
    bad = ~(np.isfinite(kl) & np.isfinite(value))
    kl = np.where(bad, np.inf, kl)  # sorts last and never brackets a finite k
    value = np.where(bad, 0.0, value)
    order = np.argsort(kl, axis=-1, kind="stable")
    kl = np.take_along_axis(kl, order, axis=-1)
    value = np.take_along_axis(value, order, axis=-1)
    if kl.shape[-1] > 1:  # points at the same KL: every one of them carries the tie's mean value
        same = kl[..., :, None] == kl[..., None, :]
        value = (same * value[..., None, :]).sum(-1) / same.sum(-1)
    n_points = kl.shape[-1]
    if n_points == 0:
        return np.full(kl.shape[:-1], np.nan)
    hi = (kl < k).sum(-1)  # index of the first point with kl >= k
    hi_c = np.minimum(hi, n_points - 1)[..., None]
    lo_c = np.maximum(hi - 1, 0)[..., None]
    k_hi = np.take_along_axis(kl, hi_c, -1)[..., 0]
    k_lo = np.take_along_axis(kl, lo_c, -1)[..., 0]
    v_hi = np.take_along_axis(value, hi_c, -1)[..., 0]
    v_lo = np.take_along_axis(value, lo_c, -1)[..., 0]
    reached = (hi < n_points) & np.isfinite(k_hi)
    exact = reached & (k_hi == k)
    inside = reached & ~exact & (hi > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (k - k_lo) / (k_hi - k_lo)
        out = np.where(exact, v_hi, np.where(inside, v_lo + t * (v_hi - v_lo), np.nan))
    return out


def value_at_kl(curve: Curve, k: float) -> float | None:
    """Linear interpolation of ``curve`` at KL ``k``; ``None`` when the curve does not reach ``k``."""
    out = float(values_at_kl(curve.kl, curve.value, k))
    return None if math.isnan(out) else out


def nice_levels(max_kl: float, n: int = 3, headroom: float = 0.9) -> list[float]:
    """``n`` evenly spaced KL levels ``step, 2 step, ..., n step`` with ``n step <= headroom * max_kl``
    and ``step`` rounded down to a round number (1, 1.2, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9 x 10^e). The
    headroom keeps the top level inside most resampled frontiers, not on the edge of the observed one."""
    if not _finite(max_kl) or max_kl <= 0 or n < 1:
        return []
    raw = headroom * float(max_kl) / n
    exponent = math.floor(math.log10(raw))
    mantissa = raw / 10 ** exponent
    nice = max(m for m in (1, 1.2, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9, 10) if m <= mantissa + 1e-12)
    step = nice * 10 ** exponent
    return [float(f"{step * i:.6g}") for i in range(1, n + 1)]


# ----------------------------------------------------------------------------------------------
# hierarchical bootstrap

Data = Mapping[Hashable, Mapping[Any, Mapping[str, float]]]


def _stable_int(obj: Any) -> int:
    return zlib.crc32(json.dumps(obj, default=str, sort_keys=True).encode())


class _Recorder(dict):
    """The mapping a statistic reads; remembers which keys it read (for ``ci_over``)."""

    def __init__(self, data: Mapping[Hashable, np.ndarray]):
        super().__init__(data)
        self.used: set[Hashable] = set()

    def __getitem__(self, key: Hashable) -> np.ndarray:
        self.used.add(key)
        return super().__getitem__(key)


@dataclass
class Resampled:
    """Per-key bootstrap draws of the (seed-averaged, prompt-averaged) mean, and the observed means."""

    observed: dict[Hashable, float]
    draws: dict[Hashable, np.ndarray]  # key -> (B,)
    per_seed: dict[Hashable, dict[Any, float]]  # key -> seed -> observed prompt mean
    seed_draws: dict[Hashable, np.ndarray]  # key -> (B,): the same seed draws, every prompt once
    n_seeds: dict[Hashable, int]
    n_prompts: int
    n_boot: int
    seed: int
    level: float = 0.95

    def evaluate(self, statistic: Callable[[Mapping[Hashable, np.ndarray]], Any]
                 ) -> tuple[float | None, np.ndarray, np.ndarray, set[Hashable]]:
        """(observed statistic or None when undefined, its B draws, its B draws under the seed draws
        alone, the keys it read)."""
        rec = _Recorder(self.draws)
        draws = np.asarray(statistic(rec), dtype=float).reshape(self.n_boot)
        seed_only = np.asarray(statistic(dict(self.seed_draws)), dtype=float).reshape(self.n_boot)
        obs_rec = _Recorder({k: np.array([v]) for k, v in self.observed.items()})
        observed = float(np.asarray(statistic(obs_rec), dtype=float).reshape(-1)[0])
        return (None if math.isnan(observed) else observed), draws, seed_only, rec.used | obs_rec.used

    def ci(self, statistic: Callable[[Mapping[Hashable, np.ndarray]], Any], *, level: float | None = None,
           null: float | None = None) -> dict[str, Any]:
        """Estimate, percentile CI, bootstrap se (and a two-sided p-value against ``null`` if given)."""
        level = self.level if level is None else level
        estimate, draws, seed_only, used = self.evaluate(statistic)
        out = summarize(estimate, draws, level=level, null=null,
                        n_seeds=max((self.n_seeds.get(k, 0) for k in used), default=0),
                        n_prompts=self.n_prompts, seed=self.seed)
        if out["n_seeds"] >= 2 and out["se"]:
            seed_only = seed_only[np.isfinite(seed_only)]
            share = float(seed_only.var(ddof=1) / out["se"] ** 2) if seed_only.size >= 2 else None
            out["seed_var_share"] = None if share is None else min(1.0, share)
            if share is not None and share >= SEED_DOMINATED and out["n_seeds"] <= FEW_SEEDS:
                out["caution"] = (f"seed-to-seed variation makes up {min(1.0, share):.0%} of the bootstrap variance "
                                  f"and there are only {out['n_seeds']} seeds: the percentile interval is too "
                                  f"narrow here (run more seeds)")
        return out


def summarize(estimate: float | None, draws: np.ndarray, *, level: float = 0.95, null: float | None = None,
              n_seeds: int = 1, n_prompts: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """The json-ready summary of an observed statistic and its bootstrap draws."""
    draws = np.asarray(draws, dtype=float)
    defined = draws[np.isfinite(draws)]
    out: dict[str, Any] = {"estimate": estimate, "ci": None, "se": None, "level": level,
                           "ci_over": "seeds and prompts" if n_seeds >= 2 else "prompts",
                           "n_seeds": n_seeds, "n_prompts": n_prompts, "n_boot": int(draws.size),
                           "defined_frac": float(defined.size / draws.size) if draws.size else 0.0}
    if seed is not None:
        out["boot_seed"] = seed
    if estimate is None or defined.size < 2:
        if null is not None:
            out["p_value"] = None
        return out
    lo, hi = np.percentile(defined, [50 * (1 - level), 50 * (1 + level)])
    out["ci"] = [float(lo), float(hi)]
    out["se"] = float(defined.std(ddof=1))
    if null is not None:
        out["p_value"] = bootstrap_p_value(defined, null)
    return out


def resample(data: Data, *, n_boot: int = DEFAULT_BOOT, seed: int = 0,
             seed_groups: Mapping[Hashable, Sequence[Any]] | None = None, level: float = 0.95) -> Resampled:
    """Draw ``n_boot`` hierarchical bootstrap resamples (seeds, then prompts shared by every key) of
    the mean of every key of ``data`` (``key -> seed -> {prompt_id: value}``; NaN/None values are
    missing). ``seed_groups``: key -> the seeds whose draw the key uses (default: its own seeds); keys
    given the same seeds share one seed draw. Deterministic in ``seed``; a key's draws do not depend
    on which other keys are present (only on the prompt universe and its seed group)."""
    keys = list(data)
    prompts = sorted({str(p) for per_seed in data.values() for vals in per_seed.values() for p in vals})
    seeds = sorted({s for per_seed in data.values() for s in per_seed}, key=lambda s: (str(type(s)), s))
    seed_index = {s: i for i, s in enumerate(seeds)}
    prompt_index = {p: i for i, p in enumerate(prompts)}
    n_keys, n_seeds, n_prompts = len(keys), len(seeds), len(prompts)
    values = np.full((n_keys, n_seeds, n_prompts), np.nan)
    for u, key in enumerate(keys):
        for s, vals in data[key].items():
            row = values[u, seed_index[s]]
            for p, v in vals.items():
                if v is not None:
                    row[prompt_index[str(p)]] = float(v)
    present = np.isfinite(values)
    filled = np.where(present, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        seed_means = filled.sum(-1) / present.sum(-1)  # (U, S), NaN: no prompt of that seed
    has_seed = np.isfinite(seed_means)

    # one prompt draw per resample, shared by every key and seed
    if n_prompts:
        prompt_rng = np.random.default_rng([seed, 0, 0])
        counts = prompt_rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=n_boot).astype(float)
        num = counts @ filled.reshape(n_keys * n_seeds, n_prompts).T
        den = counts @ present.reshape(n_keys * n_seeds, n_prompts).T.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot_seed_means = (num / den).reshape(n_boot, n_keys, n_seeds)
    else:
        boot_seed_means = np.full((n_boot, n_keys, n_seeds), np.nan)

    # one seed draw per seed group
    group_counts: dict[tuple, np.ndarray] = {}
    draws: dict[Hashable, np.ndarray] = {}
    seed_draws: dict[Hashable, np.ndarray] = {}
    observed: dict[Hashable, float] = {}
    per_seed: dict[Hashable, dict[Any, float]] = {}
    n_seeds_of: dict[Hashable, int] = {}
    for u, key in enumerate(keys):
        mine = [s for s in seeds if has_seed[u, seed_index[s]]]
        group = tuple(sorted(seed_groups[key], key=lambda s: (str(type(s)), s))) if seed_groups and key in seed_groups \
            else tuple(mine)
        group = tuple(s for s in group if s in seed_index)
        if group not in group_counts:
            c = np.zeros((n_boot, n_seeds))
            if len(group) == 1:
                c[:, seed_index[group[0]]] = 1.0
            elif group:
                rng = np.random.default_rng([seed, 1, _stable_int([str(s) for s in group])])
                drawn = rng.multinomial(len(group), np.full(len(group), 1.0 / len(group)), size=n_boot)
                c[:, [seed_index[s] for s in group]] = drawn
            group_counts[group] = c
        weights = group_counts[group] * has_seed[u][None, :]
        m = boot_seed_means[:, u, :]
        ok = np.isfinite(m) & (weights > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws[key] = np.where(ok, weights * np.where(ok, m, 0.0), 0.0).sum(-1) / np.where(ok, weights, 0.0).sum(-1)
        fixed = np.where(has_seed[u], seed_means[u], 0.0)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            seed_draws[key] = (weights * fixed).sum(-1) / weights.sum(-1)
        observed[key] = float(np.mean(seed_means[u, has_seed[u]])) if has_seed[u].any() else math.nan
        per_seed[key] = {s: float(seed_means[u, seed_index[s]]) for s in mine}
        n_seeds_of[key] = len(mine)
    return Resampled(observed=observed, draws=draws, per_seed=per_seed, seed_draws=seed_draws, n_seeds=n_seeds_of,
                     n_prompts=n_prompts, n_boot=n_boot, seed=seed, level=level)


def hierarchical_bootstrap(data: Data, statistic: Callable[[Mapping[Hashable, np.ndarray]], Any], *,
                           n_boot: int = DEFAULT_BOOT, seed: int = 0, level: float = 0.95,
                           null: float | None = None,
                           seed_groups: Mapping[Hashable, Sequence[Any]] | None = None) -> dict[str, Any]:
    """One-shot: ``resample(data, ...).ci(statistic, ...)``."""
    return resample(data, n_boot=n_boot, seed=seed, seed_groups=seed_groups, level=level).ci(statistic, null=null)


def bootstrap_p_value(draws: np.ndarray, null: float = 0.0) -> float | None:
    """Two-sided bootstrap p-value of "the statistic equals ``null``":
    min(1, 2 * min(1 + #(d <= null), 1 + #(d >= null)) / (B + 1)) over the finite draws."""
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    below = 1 + int((d <= null).sum())
    above = 1 + int((d >= null).sum())
    return float(min(1.0, 2.0 * min(below, above) / (d.size + 1)))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order. With the m non-None p-values
    sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    ``None`` entries (untested) stay ``None`` and do not count in m."""
    tested = [(float(p), i) for i, p in enumerate(p_values) if p is not None]
    m = len(tested)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
