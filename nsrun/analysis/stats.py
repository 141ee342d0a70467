"""The statistics of onsets across seeds, and the verdict rules of the reproduction (pure functions).

A run that never reached its onset counts as ``inf`` (later than any step): a median is then ``inf`` when
half or more of the runs never reached it, and bootstrap bounds can be ``inf``. Intervals are percentile
bootstrap intervals over seeds (each group resampled independently).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

from nsrun.runner.outcome import GAVE_UP, STOPPED
from nsrun.science.onsets import FAILED, UNKNOWN, Onsets

NOT_REACHED = math.inf
MIN_SEEDS = 3  # fewer seeds per group than this: every verdict is inconclusive
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


def as_onset(step: int | None) -> float:
    """A step as a number for the statistics: ``inf`` when not reached."""
    return NOT_REACHED if step is None else float(step)


def onset_value(onsets: Onsets) -> float:
    """A run's onset step for the statistics: ``inf`` when not reached, NaN when unknown (a run its stop rule
    ended cannot tell; :func:`nsrun.runner.outcome.settle_onset`) or failed (its loss became inf or nan), which
    the medians leave out."""
    return math.nan if onsets.onset_status in (UNKNOWN, FAILED) else as_onset(onsets.onset_step)


@dataclass(frozen=True)
class ComputeTotals:
    """Early stopping's account of a group of runs (:func:`compute_totals`)."""

    stopped: int  # runs the onset rule stopped
    gave_up: int  # runs the give-up rule stopped
    steps_trained: int
    steps_spared: int
    spared_frac: float  # steps spared / (trained + spared); NaN without steps
    train_seconds: float
    spared_seconds_est: float


@dataclass(frozen=True)
class Comparison:
    """A group's median onset against its baseline's (:func:`compare_ci`): ``fewer`` (1 - group / baseline) and
    ``speedup`` (baseline / group), each with its bootstrap interval ``(low, high)``."""

    fewer: float
    speedup: float
    fewer_ci: tuple[float, float]
    speedup_ci: tuple[float, float]


@dataclass(frozen=True)
class GroupStats:
    """A group's statistics (:func:`group_statistics`). ``steps``, ``seconds`` and ``lag`` are ``(median, low,
    high)``; ``baseline`` the baseline group's label, ``(baseline)`` for the baseline itself, None without one;
    ``vs_steps`` and ``vs_seconds`` the comparisons with the baseline (None for it and without one)."""

    n: int
    n_reached: int
    n_unknown: int
    n_failed: int
    compute: ComputeTotals
    steps: tuple[float, float, float]
    seconds: tuple[float, float, float]
    stab: float
    n_stab: int
    lag: tuple[float, float, float]
    n_lag: int
    baseline: str | None = None
    vs_steps: Comparison | None = None
    vs_seconds: Comparison | None = None


def compute_totals(runs) -> ComputeTotals:
    """Early stopping's account of a group of runs (:class:`nsrun.analysis.runs.Run`): how many its stop rule
    ended (``stopped`` by the onset rule, ``gave_up``), steps trained (their last steps), steps spared
    (``train.steps`` minus the last step of each run its rule ended) and their fraction of the configured
    steps, training seconds spent, and the seconds spared estimated at each run's own seconds per step."""
    kinds = [r.outcome.kind if r.outcome is not None else None for r in runs]
    trained = sum(r.last_step for r in runs)
    spared = sum(r.steps_spared for r in runs)
    seconds = [r.train_seconds for r in runs]
    spared_seconds = [r.steps_spared * s / r.last_step for r, s in zip(runs, seconds, strict=True)
                      if r.steps_spared and r.last_step]
    return ComputeTotals(kinds.count(STOPPED), kinds.count(GAVE_UP), trained, spared,
                         spared / (trained + spared) if trained + spared else math.nan,
                         float(np.nansum(seconds)) if any(map(math.isfinite, seconds)) else math.nan,
                         float(np.nansum(spared_seconds)) if spared_seconds else 0.0)


def median(values: Sequence[float]) -> float:
    """Median that treats ``inf`` (not reached) as later than every step; NaN for no values."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    return float(median_rows(v[None, :])[0]) if len(v) else math.nan


def median_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise median of a 2-D array that may hold ``inf`` (``np.median(axis=1)``)."""
    return np.median(a, axis=1)


def fewer_fraction(group, baseline):
    """``1 - group / baseline``: the fraction fewer steps (or seconds) than the baseline needs.
    A group that never gets there gives ``-inf``; a baseline that never does, 1; both, NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1 - np.asarray(group, dtype=float) / np.asarray(baseline, dtype=float)


def speedup(group, baseline):
    """``baseline / group``: how many times faster the group gets there (e.g. 4500 / 3300 = 1.36);
    0 if the group never gets there, inf if only the baseline never does, NaN if neither does."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(baseline, dtype=float) / np.asarray(group, dtype=float)


def bootstrap_ci(samples: Sequence[Sequence[float]], statistic: Callable[..., np.ndarray], n_boot: int = 10_000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic of one or more samples, each resampled with
    replacement independently. ``statistic`` maps one ``[n_boot, n_i]`` array per sample to
    ``[n_boot]`` values. Replicates whose statistic is NaN (undefined, e.g. inf / inf) are dropped; if
    too many are, the interval is NaN."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    if any(len(a) == 0 for a in arrays):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = [a[rng.integers(0, len(a), size=(n_boot, len(a)))] for a in arrays]
    stats = np.asarray(statistic(*draws), dtype=float)
    alpha = (1 - confidence) / 2
    stats = np.sort(stats[~np.isnan(stats)])  # infinities sort to the ends; no interpolation across them
    if len(stats) == 0 or n_boot - len(stats) > alpha * n_boot:
        return math.nan, math.nan
    lo = stats[int(math.floor(alpha * (len(stats) - 1)))]
    hi = stats[int(math.ceil((1 - alpha) * (len(stats) - 1)))]
    return float(lo), float(hi)


def median_ci(values: Sequence[float], n_boot: int = 10_000, confidence: float = 0.95,
              seed: int = 0) -> tuple[float, float, float]:
    """Median and its percentile-bootstrap interval: ``(median, low, high)``."""
    v = [x for x in values if not math.isnan(x)]
    return (median(v), *bootstrap_ci([v], median_rows, n_boot, confidence, seed))


def compare_ci(group: Sequence[float], baseline: Sequence[float], n_boot: int = 10_000, confidence: float = 0.95,
               seed: int = 0) -> Comparison:
    """Fraction fewer and speedup of a group's median onset against a baseline's, with bootstrap
    intervals (the two groups resampled independently)."""
    g = [x for x in group if not math.isnan(x)]
    b = [x for x in baseline if not math.isnan(x)]
    gm, bm = median(g), median(b)
    return Comparison(float(fewer_fraction(gm, bm)), float(speedup(gm, bm)),
                      bootstrap_ci([g, b], lambda x, y: fewer_fraction(median_rows(x), median_rows(y)),
                                   n_boot, confidence, seed),
                      bootstrap_ci([g, b], lambda x, y: speedup(median_rows(x), median_rows(y)),
                                   n_boot, confidence, seed))


def spearman(a, b) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``) of two equal-length sequences, non-finite pairs
    dropped; NaN for fewer than 3 pairs or a constant sequence."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(scipy.stats.spearmanr(x, y).statistic)


def group_statistics(groups, baselines: dict, n_boot: int, seed: int) -> None:
    """Fill ``group.stats`` (a :class:`GroupStats`) of each group (its runs' ``onsets`` filled in): median onset
    step and training seconds with intervals, runs that reached it, runs whose onset is unknown and runs that
    failed (both left out of the medians), median stability onset, the lag, against the group's baseline
    (``baselines``: group key -> baseline group) fewer steps / seconds and the speedups, and early stopping's
    account (:func:`compute_totals`)."""
    for i, g in enumerate(groups):
        onsets = [r.onsets for r in g.runs]
        steps = [onset_value(o) for o in onsets]
        seconds = [o.onset_seconds for o in onsets]
        stab = [as_onset(o.stab_onset_step) for o in onsets if o.stab_key is not None]
        lags = [float(o.lag_steps) for o in onsets if o.lag_steps is not None]
        base = baselines.get(g.key)
        vs_steps = vs_seconds = None
        if base is not None and base is not g:
            vs_steps = compare_ci(steps, [onset_value(r.onsets) for r in base.runs], n_boot, seed=seed + i)
            vs_seconds = compare_ci(seconds, [r.onsets.onset_seconds for r in base.runs], n_boot, seed=seed + i)
        g.stats = GroupStats(
            n=len(g.runs), n_reached=sum(math.isfinite(x) for x in steps),
            n_unknown=sum(o.onset_status == UNKNOWN for o in onsets),
            n_failed=sum(o.onset_status == FAILED for o in onsets), compute=compute_totals(g.runs),
            steps=median_ci(steps, n_boot, seed=seed + i), seconds=median_ci(seconds, n_boot, seed=seed + i),
            stab=median(stab) if stab else math.nan, n_stab=len(stab),
            lag=median_ci(lags, n_boot, seed=seed + i) if lags else (math.nan,) * 3, n_lag=len(lags),
            baseline=None if base is None else "(baseline)" if base is g else base.label,
            vs_steps=vs_steps, vs_seconds=vs_seconds)


# ----------------------------------------------------------------------------------------------- verdicts


def speedup_verdict(fewer_ci: tuple[float, float], reg_median: float, base_median: float, n_reg: int, n_base: int,
                    paper_fewer: float | None = None) -> tuple[str, str]:
    """Claim 1 (fewer steps to the onset): ``(verdict, reason)`` from the bootstrap interval of the fraction
    of fewer steps (1 - regularised / baseline median onset).

    reproduced: the interval lies above 0. not reproduced: it does not, and it excludes the paper's effect
    (its upper end <= 0, or below the paper's fraction). inconclusive: anything else (too few seeds,
    neither group reached the onset, an interval that holds both 0 and the paper's number)."""
    if min(n_reg, n_base) < MIN_SEEDS:
        return "inconclusive", f"fewer than {MIN_SEEDS} seeds per group"
    if math.isinf(reg_median) and math.isinf(base_median):
        return "inconclusive", "neither group reached the onset in most seeds"
    lo, hi = fewer_ci
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive", "interval undefined (too many seeds without an onset)"
    if lo > 0:
        if paper_fewer is not None and hi < paper_fewer:
            return "reproduced", "fewer steps, but a smaller effect than the paper's"
        if paper_fewer is not None and lo > paper_fewer:
            return "reproduced", "fewer steps, a larger effect than the paper's"
        return "reproduced", "fewer steps (95 % interval above 0)"
    if hi <= 0:
        return "not reproduced", "no fewer steps (95 % interval at or below 0)"
    if paper_fewer is not None and hi < paper_fewer:
        return "not reproduced", "interval holds 0 and excludes the paper's effect"
    return "inconclusive", "interval holds 0"


def interval_verdict(ci: tuple[float, float], n: int, positive: str, negative: str) -> tuple[str, str]:
    """A claim that a quantity is > 0: reproduced when its interval lies above 0, not reproduced when it
    lies at or below 0, else inconclusive. ``positive``/``negative`` say what each case means."""
    lo, hi = ci
    if n < MIN_SEEDS:
        return "inconclusive", f"{n} runs with a value (needs {MIN_SEEDS})"
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive", "interval undefined"
    if lo > 0:
        return "reproduced", positive
    if hi <= 0:
        return "not reproduced", negative
    return "inconclusive", "interval holds 0"
