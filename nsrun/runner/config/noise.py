"""``noise``: the noise schedule, the regulariser's rho and gamma as functions of the step (reg=stability).

``reg.rho`` and ``reg.gamma`` are the base values; the formulas are in nsrun/science/stability/schedules.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from nsrun.runner.config.checks import at_least, in_range
from nsrun.runner.config.schema import GROUPS, option, science_arguments, section
from nsrun.runner.errors import ConfigError

GROUPS["noise"] = "the noise schedule of reg=stability: rho and gamma as functions of the training step"


class _Schedule:
    def build(self, rho: float, gamma: float, train_steps: int):
        """The schedule ``step -> (rho, gamma)`` around the base values ``rho`` and ``gamma``."""
        from nsrun.science.stability.schedules import Schedule

        return Schedule(self.name, rho, gamma, train_steps, **science_arguments(self))


@option("noise", "constant")
@dataclass
class ConstantNoise(_Schedule):
    """rho and gamma stay at reg.rho and reg.gamma."""

    name: str = "constant"


@option("noise", "linear_warmup")
@dataclass
class LinearWarmupNoise(_Schedule):
    """From (rho_start, gamma_start) at step 0 linearly to (reg.rho, reg.gamma) at warmup_steps."""

    name: str = "linear_warmup"
    warmup_steps: int = at_least(0)
    rho_start: float = in_range(0, 1)
    gamma_start: float = in_range(0)


@option("noise", "cosine")
@dataclass
class CosineNoise(_Schedule):
    """Cosine from (reg.rho, reg.gamma) at step 0 to (rho_end, gamma_end) at total_steps."""

    name: str = "cosine"
    total_steps: int | None = at_least(1)
    rho_end: float = in_range(0, 1)
    gamma_end: float = in_range(0)


def _check_values(key: str, values, length: int, low: float, high: float | None) -> None:
    if values is None:
        return
    if len(values) != length or not all(v >= low and (high is None or v <= high) for v in values):
        rng = f"in [{low}, {high if high is not None else 'inf'}]"
        raise ConfigError(key, f"must be null or a list of {length} numbers {rng} (one per milestone), got {values!r}")


@option("noise", "step")
@dataclass
class StepNoise(_Schedule):
    """Piecewise constant: reg.rho and reg.gamma, then rho_values[j] / gamma_values[j] from milestones[j]."""

    name: str = "step"
    milestones: list[int] = MISSING
    rho_values: list[float] | None = MISSING
    gamma_values: list[float] | None = MISSING

    def check(self) -> None:
        m = self.milestones
        if not m or m[0] < 0 or list(m) != sorted(set(m)):
            raise ConfigError("noise.milestones", f"must be a non-empty increasing list of steps >= 0, got {m!r}")
        _check_values("noise.rho_values", self.rho_values, len(m), 0, 1)
        _check_values("noise.gamma_values", self.gamma_values, len(m), 0, None)


@option("noise", "on_fit")
@dataclass
class OnFitNoise(_Schedule):
    """Off until the training batch is fitted (accuracy >= train_acc), then reg.rho and reg.gamma for good."""

    name: str = "on_fit"
    train_acc: float = in_range(0, 1, low_open=True)
    ramp_steps: int = at_least(0)


def build_schedule(cfg):
    """The schedule ``step -> (rho, gamma)`` of ``cfg.noise`` around ``cfg.reg``'s rho and gamma."""
    reg = section(cfg, "reg")
    return section(cfg, "noise").build(reg.rho, reg.gamma, section(cfg, "train").steps)
