"""Grokking onset detection and the statistics of onset comparisons (pure functions of curves).

A curve is a pair of sequences ``steps`` (increasing eval steps) and ``values``. An onset is an eval
step, or ``None`` when the curve never gets there ("not reached" is a value, not an error). In the
statistics, a run that never reached its onset counts as ``inf`` (later than any step): a median is then
``inf`` when half or more of the runs never reached it, and bootstrap bounds can be ``inf``.

* Accuracy onset: the first eval step from which validation accuracy stays >= a threshold until the
  end of the run (so a transient spike does not count). Loss onset, for next-token prediction: the
  first step from which validation loss stays <= a target.
* Stability onset: the eval step at the end of the interval in which the stability curve falls
  fastest (steepest negative slope per step, optionally after a moving average), or the first step at
  which it falls to or below a level.
* Lag: stability onset minus accuracy onset, per run (negative: the fall precedes generalisation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

NOT_REACHED = math.inf
STABILITY_KEY = re.compile(r"^stab_[a-z]+_val_rho[0-9.e+-]+$")


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def sustained_onset(steps: Sequence[int], values: Sequence[float], level: float, above: bool = True) -> int | None:
    """First step from which every later value is >= ``level`` (``above``) or <= ``level``; missing
    and NaN values count as not meeting it. ``None`` if the last value does not meet it."""
    onset = None
    for step, v in zip(steps, values, strict=True):
        ok = _finite(v) and (v >= level if above else v <= level)
        if ok and onset is None:
            onset = step
        elif not ok:
            onset = None
    return onset


def accuracy_onset(steps: Sequence[int], accuracy: Sequence[float], threshold: float = 0.95) -> int | None:
    """First eval step from which accuracy stays >= ``threshold`` for the rest of the run."""
    return sustained_onset(steps, accuracy, threshold, above=True)


def loss_onset(steps: Sequence[int], loss: Sequence[float], target: float) -> int | None:
    """First eval step from which loss stays <= ``target`` for the rest of the run."""
    return sustained_onset(steps, loss, target, above=False)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average over ``window`` points (shrinking at the ends); ``window`` 1 is the identity."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    half = window // 2
    return np.array([np.nanmean(v[max(0, i - half): i + half + 1]) for i in range(len(v))])


def steepest_fall(steps: Sequence[int], values: Sequence[float], window: int = 1) -> int | None:
    """The eval step that ends the interval of steepest decrease per step of the (smoothed) curve;
    ``None`` if it never decreases. Intervals with a missing value are skipped."""
    s = np.asarray(steps, dtype=float)
    v = moving_average([x if _finite(x) else math.nan for x in values], window)
    if len(s) < 2:
        return None
    slopes = np.diff(v) / np.diff(s)
    slopes[~np.isfinite(slopes)] = np.inf
    i = int(np.argmin(slopes))
    return int(steps[i + 1]) if slopes[i] < 0 else None


def level_crossing(steps: Sequence[int], values: Sequence[float], level: float) -> int | None:
    """First eval step at which the curve is at or below ``level`` (not necessarily for good)."""
    for step, v in zip(steps, values, strict=True):
        if _finite(v) and v <= level:
            return step
    return None


def stability_onset(steps, values, level: float | None = None, window: int = 1) -> int | None:
    """Steepest fall, or, when ``level`` is given, the first crossing of that level."""
    return level_crossing(steps, values, level) if level is not None else steepest_fall(steps, values, window)


def value_at(steps: Sequence[int], values: Sequence[float], step: int | None) -> float:
    """``values`` at ``step`` (``inf`` when step is None, NaN when the step is not in ``steps``)."""
    if step is None:
        return NOT_REACHED
    for s, v in zip(steps, values, strict=True):
        if s == step:
            return float(v) if v is not None else math.nan
    return math.nan


def stability_key(keys) -> str | None:
    """The default stability metric among logged keys: the first ``stab_{noise}_val_rho{rho}`` in sorted
    order (token noise sorts after gaussian, so token noise is preferred when both are logged)."""
    found = sorted(k for k in keys if STABILITY_KEY.match(k))
    token = [k for k in found if k.startswith("stab_token_")]
    return (token or found or [None])[0]


def as_onset(step: int | None) -> float:
    """A step as a number for the statistics: ``inf`` when not reached."""
    return NOT_REACHED if step is None else float(step)


def median(values: Sequence[float]) -> float:
    """Median that treats ``inf`` (not reached) as later than every step; NaN for no values."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    return float(median_rows(v[None, :])[0]) if len(v) else math.nan


def median_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise median of a 2-D array that may hold ``inf`` (no inf - inf arithmetic)."""
    a = np.sort(a, axis=1)
    n = a.shape[1]
    lo, hi = a[:, (n - 1) // 2], a[:, n // 2]
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(hi), hi, (lo + hi) / 2)


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
               seed: int = 0) -> dict:
    """Fraction fewer and speedup of a group's median onset against a baseline's, with bootstrap
    intervals (the two groups resampled independently)."""
    g = [x for x in group if not math.isnan(x)]
    b = [x for x in baseline if not math.isnan(x)]
    gm, bm = median(g), median(b)
    out = {"fewer": float(fewer_fraction(gm, bm)), "speedup": float(speedup(gm, bm))}
    out["fewer_ci"] = bootstrap_ci([g, b], lambda x, y: fewer_fraction(median_rows(x), median_rows(y)),
                                   n_boot, confidence, seed)
    out["speedup_ci"] = bootstrap_ci([g, b], lambda x, y: speedup(median_rows(x), median_rows(y)),
                                     n_boot, confidence, seed)
    return out


def run_onsets(rows: Sequence[dict], timing: Sequence[dict] = (), threshold: float = 0.95,
               target_loss: float | None = None, stability: str | None = None,
               stability_level: float | None = None, window: int = 1) -> dict:
    """The onsets of one run from its ``metrics.jsonl`` rows (and ``timing.jsonl`` rows for seconds).

    Returns ``onset_step`` (None: not reached), ``onset_seconds`` (cumulative training seconds at that
    step; inf: not reached, NaN: no timing), ``stab_key``, ``stab_onset_step`` and ``lag_steps``
    (stability onset minus onset; None unless both exist)."""
    steps = [r["step"] for r in rows]
    if target_loss is not None:
        onset = loss_onset(steps, [r.get("val_loss") for r in rows], target_loss)
    else:
        onset = accuracy_onset(steps, [r.get("val_acc") for r in rows], threshold)
    seconds = value_at([t["step"] for t in timing], [t.get("train_seconds") for t in timing], onset)
    key = stability or stability_key(rows[0].keys() if rows else ())
    stab_onset = None
    if key is not None and any(key in r for r in rows):
        stab_onset = stability_onset(steps, [r.get(key) for r in rows], stability_level, window)
    lag = stab_onset - onset if stab_onset is not None and onset is not None else None
    return {"onset_step": onset, "onset_seconds": seconds, "stab_key": key, "stab_onset_step": stab_onset,
            "lag_steps": lag}
