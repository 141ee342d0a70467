"""How many seeds would settle a comparison of onsets: a simulation power analysis of the report's own rule.

The rule being powered is the one every report applies: the percentile-bootstrap 95 % interval of fewer steps,
``1 - group median / baseline median`` (:func:`nsrun.analysis.stats.compare_ci`), must exclude 0. A seed that
never reaches the onset counts as later than any step (``inf``); unknown or failed onsets (NaN) are left out.

Method (a plug-in power analysis; Efron and Tibshirani 1993, ch. 16 for the smoothed bootstrap):

1. Each arm is modelled by its observed seeds, smoothed: a draw picks one observed onset at random; a seed that
   never reached stays ``inf``; a reached one is ``exp(mu + (log x - mu + h z) / sqrt(1 + h^2 / s^2))``, with
   ``mu``, ``s`` the mean and sd of the arm's log onsets, ``z`` standard normal and ``h`` Silverman's bandwidth
   ``0.9 min(s, IQR / 1.34) m^(-1/5)`` (``m`` reached seeds). The smoothing keeps the mean and sd of the logs and
   stops a median of 320 draws from locking onto one of five observed values.
2. An effect ``e`` is imposed by scaling the group's model so that its median is ``(1 - e)`` times the
   baseline model's (the spread of each arm, relative to its median, is what was observed). A group that did
   not reach the onset in most seeds has no median to scale: the baseline's model stands in for its shape.
3. ``n_sim`` experiments of ``n`` seeds per arm are drawn, and each gets the report's interval from
   ``n_boot`` bootstrap medians per arm (drawn exactly, from the order statistics of the sorted sample: the
   k-th smallest of ``n`` resampled indices is ``ceil(n U)`` with ``U ~ Beta(k, n - k + 1)``).
   The power at ``e`` is the fraction of experiments whose interval lies above 0 (below 0 for ``e < 0``).
4. Seeds needed: the smallest ``n`` of :data:`SEED_GRID` with power >= :data:`POWER` (by bisection over the
   grid: the power grows with ``n``); ``None`` beyond it.
   Smallest effect resolvable: the smallest ``e`` with power >= :data:`POWER` at the seeds each arm has now.

The draws are shared across effects (common random numbers), so the power grows with ``e`` and the smallest
resolvable effect is read off exactly, without a search. The numbers inherit the uncertainty of a spread
estimated from a few seeds: a guide to the order of magnitude, not a guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from nsrun.analysis.stats import MIN_SEEDS, fewer_fraction, onset_value

PAPER_FEWER = 1 - 3300 / 4500  # SCIENCE.md: modular addition, ~4500 -> ~3300 steps to converge (26.7 % fewer)
SEED_GRID = (5, 10, 20, 40, 80, 160, 320)
POWER = 0.8
CONFIDENCE = 0.95
N_SIM = 300
N_BOOT = 500


@dataclass(frozen=True)
class SeedsNeeded:
    """Seeds per arm for the report's interval to exclude 0 with power :data:`POWER` (``None``: more than the
    grid's largest), at ``effect`` (e.g. the paper's) and at the ``observed`` effect; the smallest effect (fewer
    steps) resolvable with the seeds there are (``None``: none short of 100 %); ``why`` says why none of it can
    be said (then the rest is ``None``/NaN)."""

    effect: float
    seeds: int | None
    observed: float
    seeds_observed: int | None
    resolvable: float | None
    n_group: int
    n_baseline: int
    cap: int
    why: str = ""


@dataclass(frozen=True)
class OnsetModel:
    """An arm's smoothed observed onsets (method step 1), scaled by ``scale``."""

    logs: np.ndarray  # log onset of each observed seed; inf for a seed that never reached
    mu: float
    shrink: float  # 1 / sqrt(1 + h^2 / s^2)
    h: float
    median: float  # the model's median (scale 1), from a large draw

    @classmethod
    def of(cls, onsets: Sequence[float], seed: int) -> OnsetModel:
        x = np.maximum(np.asarray(onsets, dtype=float), 1.0)  # an onset at step 0 (a tiny run) as step 1
        finite = np.log(x[np.isfinite(x)])
        mu = float(finite.mean()) if len(finite) else 0.0
        s = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
        iqr = float(np.subtract(*np.percentile(finite, [75, 25]))) if len(finite) > 1 else 0.0
        width = min(s, iqr / 1.34) or s
        h = 0.9 * width * len(finite) ** -0.2 if s > 0 else 0.0
        logs = np.where(np.isfinite(x), np.log(np.where(np.isfinite(x), x, 1.0)), np.inf)
        model = cls(logs, mu, 1 / math.sqrt(1 + (h / s) ** 2) if s > 0 else 1.0, h, math.nan)
        big = np.sort(model.draw(np.random.default_rng([seed, 7]), (1, 20_001))[0])
        return cls(logs, mu, model.shrink, h, float(big[10_000]))

    def draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        picked = self.logs[rng.integers(0, len(self.logs), size=shape)]
        z = rng.standard_normal(shape)
        with np.errstate(invalid="ignore"):
            return np.exp(np.where(np.isinf(picked), np.inf, self.mu + (picked - self.mu + self.h * z) * self.shrink))


def bootstrap_medians(sorted_rows: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[rows, n_boot]`` bootstrap medians of each row of ``sorted_rows`` (sorted ascending, may hold inf),
    drawn from the exact distribution of a resample's order statistics (no resampling of whole rows)."""
    rows, n = sorted_rows.shape
    k = (n + 1) // 2  # the lower middle order statistic (the median itself for odd n)
    u1 = rng.beta(k, n - k + 1, size=(rows, n_boot))
    lower = np.take_along_axis(sorted_rows, np.clip(np.ceil(n * u1).astype(int) - 1, 0, n - 1), axis=1)
    if n % 2:
        return lower
    u2 = u1 + (1 - u1) * (1 - rng.random(size=(rows, n_boot)) ** (1 / (n - k)))  # Beta(1, n - k) by inversion
    upper = np.take_along_axis(sorted_rows, np.clip(np.ceil(n * u2).astype(int) - 1, 0, n - 1), axis=1)
    return np.where(np.isinf(upper), upper, (lower + upper) / 2)


def interval_thresholds(group: OnsetModel, base: OnsetModel, n_group: int, n_base: int, n_sim: int, n_boot: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per simulated experiment, ``x`` and ``y`` with: its interval of fewer steps lies above 0 iff
    ``1 - e < x``, below 0 iff ``1 - e > y``, when the group's model is scaled to ``(1 - e)`` times the
    baseline's median (method steps 2-3; the bootstrap_ci index convention)."""
    rng = np.random.default_rng([seed, n_group, n_base])
    g = np.sort(group.draw(rng, (n_sim, n_group)), axis=1)
    b = np.sort(base.draw(rng, (n_sim, n_base)), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.sort(bootstrap_medians(g, n_boot, rng) / bootstrap_medians(b, n_boot, rng), axis=1)  # NaN last
    kept = (~np.isnan(ratio)).sum(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    last = np.maximum(kept - 1, 0)
    at_lo = last - np.floor(alpha * last).astype(int)  # the ratio whose fewer steps is the interval's low end
    at_hi = last - np.ceil((1 - alpha) * last).astype(int)
    ratio_lo = np.take_along_axis(ratio, at_lo[:, None], axis=1)[:, 0]
    ratio_hi = np.take_along_axis(ratio, at_hi[:, None], axis=1)[:, 0]
    k0 = base.median / group.median  # fewer = 1 - (1 - e) k0 ratio
    defined = (n_boot - kept) <= alpha * n_boot
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(defined, 1 / (k0 * ratio_lo), -np.inf)
        y = np.where(defined, 1 / (k0 * ratio_hi), np.inf)
    return np.nan_to_num(x, nan=-np.inf), np.nan_to_num(y, nan=np.inf)


def resolvable_range(x: np.ndarray, y: np.ndarray, power: float) -> tuple[float, float]:
    """``(above, below)``: effects ``e > above`` are resolved as fewer steps, ``e < below`` as more, each with
    at least ``power`` of the experiments."""
    need = math.ceil(power * len(x)) - 1
    return 1 - float(np.sort(x)[::-1][need]), 1 - float(np.sort(y)[need])


def resolved(effect: float, above: float, below: float) -> bool:
    return (effect > max(above, 0.0)) if effect > 0 else (effect < min(below, 0.0)) if effect < 0 else False


def smallest_seeds(effect: float, grid: tuple, range_at) -> int | None:
    """The smallest ``n`` of ``grid`` whose ``range_at(n)`` resolves ``effect``, by bisection (the largest
    first: ``None`` when even it does not)."""
    if not resolved(effect, *range_at(grid[-1])):
        return None
    lo, hi = -1, len(grid) - 1  # grid[hi] resolves; grid[lo] does not (-1: below the grid)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if resolved(effect, *range_at(grid[mid])) else (mid, hi)
    return grid[hi]


@lru_cache(maxsize=4096)
def _seeds_needed(group: tuple, baseline: tuple, effect: float, power: float, grid: tuple, n_sim: int,
                  n_boot: int, seed: int) -> SeedsNeeded:
    base_median = float(np.median(baseline)) if baseline else math.nan
    group_median = float(np.median(group)) if group else math.nan
    observed = float(fewer_fraction(group_median, base_median))
    common = {"effect": effect, "n_group": len(group), "n_baseline": len(baseline), "cap": grid[-1]}
    if not group or not baseline or not math.isfinite(base_median) or base_median <= 0:
        why = ("no onsets" if not group or not baseline else "baseline not reached" if base_median > 0
               else "baseline onset at step 0")
        return SeedsNeeded(seeds=None, observed=observed, seeds_observed=None, resolvable=None, why=why, **common)
    base = OnsetModel.of(baseline, seed)
    model = OnsetModel.of(group if math.isfinite(group_median) else baseline, seed)
    ranges = {}

    def range_at(n: int) -> tuple[float, float]:
        if n not in ranges:
            ranges[n] = resolvable_range(*interval_thresholds(model, base, n, n, n_sim, n_boot, seed), power)
        return ranges[n]

    needed = smallest_seeds(effect, grid, range_at)
    needed_observed = None if math.isnan(observed) else smallest_seeds(observed, grid, range_at)
    now = None
    if min(len(group), len(baseline)) >= MIN_SEEDS:
        above, _ = resolvable_range(*interval_thresholds(model, base, len(group), len(baseline), n_sim, n_boot, seed),
                                    power)
        now = max(above, 0.0) if above < 1 else None
    return SeedsNeeded(seeds=needed, observed=observed, seeds_observed=needed_observed, resolvable=now, **common)


def seeds_needed(group: Sequence[float], baseline: Sequence[float], effect: float = PAPER_FEWER,
                 power: float = POWER, grid: Sequence[int] = SEED_GRID, n_sim: int = N_SIM, n_boot: int = N_BOOT,
                 seed: int = 0) -> SeedsNeeded:
    """Seeds per arm for the interval of fewer steps (``1 - group / baseline`` median onset) to exclude 0 with
    ``power`` at ``effect`` and at the observed effect, and the smallest effect resolvable with the seeds there
    are (the module's method), from each arm's per-seed onsets (``inf``: never reached; NaN: left out).
    Deterministic for a given ``seed``."""
    def clean(values):
        return tuple(sorted(float(v) for v in values if not math.isnan(v)))

    return _seeds_needed(clean(group), clean(baseline), float(effect), float(power), tuple(sorted(grid)), n_sim,
                         n_boot, seed)


def onset_values(runs) -> list[float]:
    """Each run's onset step for the statistics (``inf``: not reached; NaN: unknown or failed)."""
    return [onset_value(r.onsets) for r in runs]


def group_seeds(groups, baselines: dict, effect: float = PAPER_FEWER, seed: int = 0) -> None:
    """Fill ``group.seeds`` (:class:`SeedsNeeded`) of each group compared with a baseline (``baselines``:
    group key -> baseline group; the groups' ``stats`` and runs' ``onsets`` filled in)."""
    for g in groups:
        base = baselines.get(g.key)
        if base is not None and base is not g and g.stats.vs_steps:
            g.seeds = seeds_needed(onset_values(g.runs), onset_values(base.runs), effect, seed=seed)


def seeds_fields(s: SeedsNeeded | None) -> dict:
    """The numbers of ``s`` for a csv row: seeds per arm (inf: more than the grid's largest; empty: undefined),
    the effect asked about and the smallest effect resolvable now (NaN: none)."""
    def count(n):
        return "" if s is None or s.why else math.inf if n is None else n

    return {"seeds_effect": s.effect if s else math.nan, "seeds_needed": count(s.seeds if s else None),
            "seeds_needed_observed": count(s.seeds_observed if s else None),
            "resolvable_fewer_now": math.nan if s is None or s.resolvable is None else s.resolvable}


def fmt_count(n: int | None, cap: int) -> str:
    return f"> {cap}" if n is None else str(n)


def fmt_seeds(s: SeedsNeeded | None) -> str:
    """``26.7 %: 40; observed +12.0 %: > 320; now >= 35.0 %``: seeds per arm for the paper's effect and the
    observed one, and the smallest effect the seeds there are resolve."""
    if s is None:
        return "-"
    if s.why:
        return f"- ({s.why})"
    observed = "" if math.isnan(s.observed) or math.isinf(s.observed) else (
        f"; observed {100 * s.observed:+.1f} %: {fmt_count(s.seeds_observed, s.cap)}")
    now = "none" if s.resolvable is None else f">= {100 * s.resolvable:.1f} %"
    return f"{100 * s.effect:.1f} %: {fmt_count(s.seeds, s.cap)}{observed}; now {now}"


SEEDS_RULE = (f"Seeds to settle: seeds per arm for the 95 % interval of fewer steps to exclude 0 in {POWER:.0%} of "
              f"simulated experiments, at an effect of the paper's size and at the observed effect, and the smallest "
              f"effect (fewer steps) the seeds there are resolve; each arm drawn from its own observed onsets "
              f"(smoothed bootstrap), the group's scaled to the effect; {N_SIM} experiments of "
              f"{', '.join(map(str, SEED_GRID))} seeds per arm ('> {SEED_GRID[-1]}': not even then); docs/compare.md.")
