"""``stop``: early stopping, ending a run once its outcome is settled (nsrun/runner/stopping.py)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from nsrun.runner.config.checks import check_choice, check_int, check_number, check_str
from nsrun.runner.config.schema import describe, option, section

describe("stop", "early stopping: end a run once its metric has stayed past a level (or stopped improving)")

DIRECTIONS = ("above", "below")


@option("stop", "none")
@dataclass
class NoStop:
    """No early stopping: every run trains to train.steps."""

    name: str = "none"

    def rule(self):
        return None


@option("stop", "onset")
@dataclass
class OnsetStop:
    """Stop once metric has been past level for patience steps; optionally give up without improvement."""

    name: str = "onset"
    metric: str = MISSING
    level: float = MISSING
    direction: str = MISSING
    patience: int = MISSING
    give_up_patience: int | None = MISSING
    give_up_min_delta: float = MISSING
    unreached_penalty: int = MISSING

    def check(self) -> None:
        check_str("stop.metric", self.metric)
        check_number("stop.level", self.level)
        check_choice("stop.direction", self.direction, DIRECTIONS)
        check_int("stop.patience", self.patience, 0)
        check_int("stop.give_up_patience", self.give_up_patience, 1, optional=True)
        check_number("stop.give_up_min_delta", self.give_up_min_delta, 0)
        check_int("stop.unreached_penalty", self.unreached_penalty, 0)

    def rule(self):
        from nsrun.runner.stopping import StopRule

        return StopRule(metric=self.metric, level=float(self.level), direction=self.direction,
                        patience=self.patience, give_up_patience=self.give_up_patience,
                        give_up_min_delta=float(self.give_up_min_delta))


def stop_rule(cfg):
    """The stop rule of ``cfg.stop`` (a ``StopRule``), or None for ``stop=none``."""
    return section(cfg, "stop").rule()
