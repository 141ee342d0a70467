"""``stop``: early stopping, ending a run once its outcome is settled (nsrun/runner/stopping.py)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from nsrun.runner.config.checks import at_least, in_range, non_empty, one_of
from nsrun.runner.config.schema import GROUPS, option, section

GROUPS["stop"] = "early stopping: end a run once its metric has stayed past a level (or stopped improving)"

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
    metric: str = non_empty()
    level: float = MISSING
    direction: str = one_of(*DIRECTIONS)
    patience: int = at_least(0)
    give_up_patience: int | None = at_least(1)
    give_up_min_delta: float = in_range(0)
    unreached_penalty: int = at_least(0)

    def rule(self):
        from nsrun.runner.stopping import StopRule

        return StopRule(metric=self.metric, level=float(self.level), direction=self.direction,
                        patience=self.patience, give_up_patience=self.give_up_patience,
                        give_up_min_delta=float(self.give_up_min_delta))


def stop_rule(cfg):
    """The stop rule of ``cfg.stop`` (a ``StopRule``), or None for ``stop=none``."""
    return section(cfg, "stop").rule()
