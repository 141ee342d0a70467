"""How a run ended early, as data: the outcome that DONE records (:mod:`nsrun.runner.rundir`) and every reader
takes from there, and :func:`settle_onset`, the one answer to "is this onset known, given how the run ended?".

An outcome's ``kind`` is ``stopped`` (the onset rule of :mod:`nsrun.runner.stopping`: ``metric`` stayed past
``level`` in ``direction`` from step ``since`` on for the patience), ``gave up`` (the give-up rule: the best
value, at step ``since``, stopped improving) or ``failed`` (the training loss became inf or nan: ``reason``
and ``loss``). ``step`` is the step the run ended at, ``text`` the same in words. A run that trained to its
last step has no outcome. DONE's third line holds it as JSON, e.g.::

    {"kind": "stopped", "step": 7900, "text": "stopped: val_acc >= 0.95 held for 3000 steps (past the level
     since step 4900)", "metric": "val_acc", "direction": "above", "level": 0.95, "since": 4900}

Run directories written before outcomes were data have only the text of a stopped or gave-up run (DONE's
second line): :func:`legacy_outcome` is the one reader of that prose.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from nsrun.science.onsets import NOT_REACHED, UNKNOWN, Onsets

STOPPED, GAVE_UP, FAILED = "stopped", "gave up", "failed"  # a failed run's onset status is FAILED too
KINDS = (STOPPED, GAVE_UP, FAILED)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended before its last step (see the module's docstring for the fields)."""

    kind: str
    step: int | None
    text: str = ""
    metric: str | None = None
    direction: str | None = None  # above | below; None where an old run directory does not say
    level: float | None = None
    since: int | None = None
    reason: str | None = None  # failed: why, e.g. "non-finite loss"
    loss: str | None = None  # failed: nan | inf | -inf

    @property
    def by_rule(self) -> bool:
        """Whether its stop rule ended it (stopped or gave up): it is then complete whatever train.steps."""
        return self.kind in (STOPPED, GAVE_UP)

    @property
    def failed(self) -> bool:
        return self.kind == FAILED

    @property
    def rule(self) -> str:
        """The rule that ended the run, e.g. ``stopped: val_acc >= 0.95`` (without the level or direction where an
        old run directory does not say them), or the failure: ``failed: non-finite loss``."""
        if self.failed:
            return f"{FAILED}: {self.reason or 'non-finite loss'}"
        op = {"above": ">=", "below": "<="}.get(self.direction or "", "past")
        level = f" {op} {self.level:g}" if self.level is not None else ""
        return f"{self.kind}: {self.metric}{level}"

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def from_json(cls, data) -> RunOutcome | None:
        """The outcome of a DONE's JSON line; None for anything else. A failed run's outcome written before
        outcomes carried their text gets its text here."""
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            return None
        outcome = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data and f.name != "step"},
                      step=data.get("step") if isinstance(data.get("step"), int) else None)
        return outcome if outcome.text or not outcome.failed else failure(outcome.step, outcome.loss or "",
                                                                          outcome.reason or "non-finite loss")


@dataclass(frozen=True)
class DoneInfo:
    """What a run's DONE records: its last ``step`` and its ``outcome`` (None: it trained to its last step)."""

    step: int | None
    outcome: RunOutcome | None = None

    @property
    def reason(self) -> str | None:
        """Why the run ended early, in words; None when it trained to its last step."""
        return self.outcome.text if self.outcome is not None else None


def failure(step: int, loss: str, reason: str = "non-finite loss") -> RunOutcome:
    """The outcome of a run whose training loss (``loss``: nan, inf or -inf) was not finite first at ``step``."""
    return RunOutcome(FAILED, step, f"{FAILED}: loss is {loss or 'not finite'} at step {step}", reason=reason,
                      loss=loss or None)


def legacy_outcome(step: int | None, text: str | None, stop: dict | None) -> RunOutcome | None:
    """The outcome of a run that ended at ``step`` as DONE's prose ``text`` (its second line, in run directories
    written before outcomes were data) records it, e.g. ``stopped: val_acc >= 0.95 held for 3000 steps (past the
    level since step 4900)`` or ``gave up: best val_acc 0.6 at step 200, no improvement for 300 steps``; None for
    any other text (a run that trained to its last step). ``stop`` is the run's saved ``stop`` config: a stopped
    run's level is taken exactly from it where the text shows the same one (the text rounds it); a run that gave
    up names no direction and level, so they come from it where its metric is the text's, else stay None."""
    kind, _, rest = (text or "").partition(": ")
    words = rest.replace(",", " ").split()
    metric = (words[1:2] if kind == GAVE_UP else words[:1]) or [None]
    stop = stop if isinstance(stop, dict) and stop.get("name") == "onset" else {}
    same_metric = metric[0] is not None and stop.get("metric") == metric[0]
    saved = stop.get("level") if same_metric and isinstance(stop.get("level"), (int, float)) else None
    if kind == STOPPED and len(words) >= 5 and words[1] in (">=", "<=") and words[3:5] == ["held", "for"]:
        try:
            level = float(saved) if saved is not None and f"{saved:g}" == words[2] else float(words[2])
        except ValueError:
            level = None
        since = words[-1].rstrip(")") if "since step" in rest else None
        return RunOutcome(STOPPED, step, text, words[0], "above" if words[1] == ">=" else "below", level,
                          int(since) if since and since.isdigit() else None)
    if kind == GAVE_UP and len(words) >= 6 and words[0] == "best" and words[3:5] == ["at", "step"]:
        best_step = words[5]
        return RunOutcome(GAVE_UP, step, text, words[1], stop.get("direction") if same_metric else None,
                          float(saved) if saved is not None else None,
                          int(best_step) if best_step.isdigit() else None)
    return None


def _at_least_as_strict(direction: str, level: float, than: float) -> bool:
    return level >= than if direction == "above" else level <= than


def settle_onset(onsets: Onsets, outcome: RunOutcome | None, rule) -> Onsets:
    """``onsets`` read from a run's logged rows (its ``metric`` past ``level`` in ``direction``, the three
    attributes of ``rule``, for the rest of the run), settled by how the run ended (``outcome``):

    * trained to its last step: as the rows say (reached or not reached);
    * stopped by the onset rule on the same metric and direction at a level at least as strict: the rule's
      premise (the metric stays past its level) holds the analysed level too, so the onset read from the rows
      stands (for the same level it is the step where the stopping stretch began);
    * gave up, the analysed level at least as strict as the rule's: the rule's premise (it will not get past
      its level) says it will not get past the analysed one: not reached (inf seconds);
    * failed (its loss became inf or nan): ``failed``, no onset (NaN seconds);
    * any other run its rule ended (another metric, or a stop level looser than the analysed one, e.g. stopped
      at val_acc >= 0.95 and analysed at 0.99): ``unknown``, no onset (NaN seconds).
    """
    if outcome is None:
        return onsets
    if outcome.failed:
        return onsets.without_onset(FAILED, math.nan)
    direction = rule.direction
    same = outcome.metric == rule.metric and outcome.direction == direction and outcome.level is not None
    if outcome.kind == STOPPED and same and _at_least_as_strict(direction, outcome.level, rule.level):
        return onsets
    if outcome.kind == GAVE_UP and same and _at_least_as_strict(direction, rule.level, outcome.level):
        return onsets.without_onset(NOT_REACHED, math.inf)
    return onsets.without_onset(UNKNOWN, math.nan)
