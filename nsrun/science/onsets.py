"""Grokking onset detection: pure functions of curves.

A curve is a pair of sequences ``steps`` (increasing eval steps) and ``values``. An onset is an eval
step, or ``None`` when the curve never gets there ("not reached" is a value, not an error).

* Accuracy onset: the first eval step from which validation accuracy stays >= a threshold until the
  end of the run (so a transient spike does not count). Loss onset, for next-token prediction: the
  first step from which validation loss stays <= a target.
* Stability onset: the eval step at the end of the interval in which the stability curve falls
  fastest (steepest negative slope per step, optionally after a moving average), or the first step at
  which it falls to or below a level.
* Lag: stability onset minus accuracy onset, per run (negative: the fall precedes generalisation).

The statistics of onsets across seeds are in :mod:`nsrun.analysis.stats`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

STABILITY_KEY = re.compile(r"^stab_[a-z]+_val_rho[0-9.e+-]+$")
ONSET_METRICS = ("val_acc", "val_loss")


@dataclass(frozen=True)
class OnsetRule:
    """How a run's onsets are read: ``metric`` val_acc (stays >= ``level``) or val_loss (stays <= ``level``);
    the stability onset at the first step at or below ``stability_level``, or (None) at the end of the
    steepest fall after a moving average over ``window`` eval points."""

    metric: str = "val_acc"
    level: float = 0.95
    stability_level: float | None = None
    window: int = 1

    def __post_init__(self):
        if self.metric not in ONSET_METRICS:
            raise ValueError(f"onset metric must be one of {', '.join(ONSET_METRICS)}, got {self.metric!r}")

    @property
    def comparison(self) -> str:
        return ">=" if self.metric == "val_acc" else "<="

    @property
    def direction(self) -> str:
        """``above`` (val_acc stays >= the level) or ``below`` (val_loss stays <= it)."""
        return "above" if self.metric == "val_acc" else "below"

    def describe(self) -> str:
        return f"{self.metric} {self.comparison} {self.level:g} for the rest of the run"

    def describe_stability(self, key: str | None) -> str:
        if not key:
            return "none"
        if self.stability_level is not None:
            return f"{key}: first step <= {self.stability_level:g}"
        return f"{key}: end of the steepest fall" + (f" (moving average {self.window})" if self.window > 1 else "")


REACHED, NOT_REACHED, UNKNOWN, FAILED = "reached", "not reached", "unknown", "failed"


@dataclass(frozen=True)
class Onsets:
    """The onsets of one run: ``onset_step`` (None: not reached), ``onset_seconds`` (cumulative training seconds
    at that step; inf: not reached, NaN: no timing or no onset to time), the stability metric ``stab_key`` and
    its onset ``stab_onset_step``, ``lag_steps`` (stability onset minus onset; None unless both exist) and
    ``onset_status``: reached | not reached (what the rows say), or, once settled by how the run ended
    (:func:`nsrun.runner.outcome.settle_onset`), unknown | failed."""

    onset_step: int | None
    onset_seconds: float = math.nan
    stab_key: str | None = None
    stab_onset_step: int | None = None
    lag_steps: int | None = None
    onset_status: str = ""

    def __post_init__(self):
        if not self.onset_status:
            object.__setattr__(self, "onset_status", REACHED if self.onset_step is not None else NOT_REACHED)

    def without_onset(self, status: str, seconds: float) -> Onsets:
        """No onset (and so no lag), with ``status`` and ``seconds`` (inf: not reached, NaN: unknown or failed)."""
        return replace(self, onset_step=None, onset_seconds=seconds, lag_steps=None, onset_status=status)


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
        return math.inf
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


def curve(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of the rows that logged ``key`` (rows without it, or with null, are skipped)."""
    kept = [row for row in rows if row.get(key) is not None]
    return [row["step"] for row in kept], [float(row[key]) for row in kept]


def onsets_from_rows(rows: Sequence[dict], timing: Sequence[dict] = (), threshold: float = 0.95,
               target_loss: float | None = None, stability: str | None = None,
               stability_level: float | None = None, window: int = 1) -> Onsets:
    """The :class:`Onsets` of one run from its ``metrics.jsonl`` rows (and ``timing.jsonl`` rows for seconds):
    the accuracy onset at ``threshold``, or the loss onset at ``target_loss`` when given."""
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
    return Onsets(onset, seconds, key, stab_onset, lag)


def rule_onsets(rows: Sequence[dict], timing: Sequence[dict], rule: OnsetRule, stability: str | None) -> Onsets:
    """:func:`onsets_from_rows` under ``rule``, with ``stability`` the stability metric of the whole comparison
    (None, or a key this run does not log: no stability onset and no lag)."""
    target = rule.level if rule.metric == "val_loss" else None
    onsets = onsets_from_rows(rows, timing, rule.level, target, stability, rule.stability_level, rule.window)
    if stability is None or not any(stability in row for row in rows):
        return replace(onsets, stab_key=None, stab_onset_step=None, lag_steps=None)
    return onsets
