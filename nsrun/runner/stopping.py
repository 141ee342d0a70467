"""Early stopping (config group ``stop``): end a run once its outcome is settled.

* The onset rule: stop at the first eval step ``s`` at which ``metric`` has been past ``level`` (``>=`` for
  ``direction: above``, ``<=`` for ``below``) at every eval step from ``s0`` to ``s`` and ``s - s0 >= patience``.
  The run then "stays past the level for the rest of the run" from ``s0`` on, so its onset is ``s0``, the
  same step an unstopped run reports unless the metric would later have fallen back (choose a patience longer
  than the spikes of the setting).
* The give-up rule (optional): stop when the best value of ``metric`` has not improved by more than
  ``give_up_min_delta`` for ``give_up_patience`` steps: a hopeless run counts as "not reached".

A rule is a pure function of the metrics rows it has seen, so a resumed run re-reads its rows and stops
exactly where an uninterrupted one would. Why it stopped is a :class:`nsrun.runner.outcome.RunOutcome`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nsrun.runner.outcome import GAVE_UP, STOPPED, RunOutcome


@dataclass(frozen=True)
class StopRule:
    metric: str
    level: float
    direction: str = "above"  # above | below
    patience: int = 0  # steps the metric must stay past the level
    give_up_patience: int | None = None  # steps without improvement of the best value; None = never give up
    give_up_min_delta: float = 0.0

    def past(self, value: float) -> bool:
        return value >= self.level if self.direction == "above" else value <= self.level

    def describe(self) -> str:
        op = ">=" if self.direction == "above" else "<="
        return f"{self.metric} {op} {self.level:g} held for {self.patience} steps"


class StopTracker:
    """Feeds one run's metrics rows to a :class:`StopRule`; ``update(row)`` returns the outcome that ends the run
    at that row, or None."""

    def __init__(self, rule: StopRule):
        self.rule = rule
        self.since: int | None = None  # first step of the current stretch past the level
        self.best: float | None = None
        self.best_step: int | None = None

    def update(self, row: dict) -> RunOutcome | None:
        rule, step = self.rule, int(row["step"])
        value = row.get(rule.metric)
        if value is None or not isinstance(value, (int, float)) or math.isnan(value):
            self.since = None
            return None
        if rule.past(value):
            self.since = step if self.since is None else self.since
            if step - self.since >= rule.patience:
                return RunOutcome(STOPPED, step, f"{STOPPED}: {rule.describe()} (past the level since step "
                                  f"{self.since})", rule.metric, rule.direction, rule.level, self.since)
        else:
            self.since = None
        better = self.best is None or (value - self.best > rule.give_up_min_delta if rule.direction == "above"
                                       else self.best - value > rule.give_up_min_delta)
        if better:
            self.best, self.best_step = value, step
        elif rule.give_up_patience is not None and step - self.best_step >= rule.give_up_patience:
            return RunOutcome(GAVE_UP, step, f"{GAVE_UP}: best {rule.metric} {self.best:.4g} at step "
                              f"{self.best_step}, no improvement for {rule.give_up_patience} steps", rule.metric,
                              rule.direction, rule.level, self.best_step)
        return None

    def replay(self, rows: list[dict]) -> RunOutcome | None:
        """Feed the rows a resumed run already logged; the outcome if the run should already have stopped."""
        outcome = None
        for row in rows:
            outcome = self.update(row) or outcome
        return outcome
