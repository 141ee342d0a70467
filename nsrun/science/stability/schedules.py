"""Noise schedules (config group ``noise/``): the regulariser's rho and gamma as functions of the step.

``reg.rho`` and ``reg.gamma`` are the *base* values; ``s`` is the optimiser step (0-based, the step whose
update is being computed) and ``clip(u) = min(max(u, 0), 1)``.

* ``constant``:      ``v(s) = v``.
* ``linear_warmup``: ``v(s) = v_start + (v - v_start) * clip(s / warmup_steps)``
  (keys ``warmup_steps``, ``rho_start`` (default 1: no noise), ``gamma_start`` (default 0: no regulariser)).
* ``cosine``:        ``v(s) = v_end + (v - v_end) * (1 + cos(pi * clip(s / total_steps))) / 2``
  (keys ``total_steps`` (null: ``train.steps``), ``rho_end``, ``gamma_end``); starts at v, ends at v_end.
* ``step``:          ``v(s) = v`` for ``s < milestones[0]``, else ``values[j]`` for the last ``milestones[j] <= s``
  (keys ``milestones`` (increasing), ``rho_values``, ``gamma_values``: one value per milestone, or null to
  keep that quantity constant).

Schedules are pure functions of the step (no state), so a resumed run sees exactly the same values.
"""

from __future__ import annotations

import math

from nsrun.runner.config import require_int, require_number, select
from nsrun.runner.errors import ConfigError

SCHEDULE_NAMES = ("constant", "linear_warmup", "cosine", "step")


def _clip(u: float) -> float:
    return min(max(u, 0.0), 1.0)


class Schedule:
    """``schedule(step) -> (rho, gamma)``."""

    def __init__(self, name: str, rho: float, gamma: float, train_steps: int, **keys):
        """``keys``: the schedule's own values (module docstring); ``train_steps`` is the cosine's default
        ``total_steps``."""
        if name not in SCHEDULE_NAMES:
            raise ValueError(f"name must be one of {', '.join(SCHEDULE_NAMES)}, got {name!r}")
        for k in ("milestones", "rho_values", "gamma_values"):
            if keys.get(k) is not None:
                keys[k] = [int(v) if k == "milestones" else float(v) for v in keys[k]]
        self.name, self.rho, self.gamma, self.keys = name, float(rho), float(gamma), keys
        if name == "cosine" and keys.get("total_steps") is None:
            self.keys["total_steps"] = train_steps

    def value(self, which: str, step: int) -> float:
        base = self.rho if which == "rho" else self.gamma
        k = self.keys
        if self.name == "constant":
            return base
        if self.name == "linear_warmup":
            start = k[f"{which}_start"]
            frac = _clip(step / k["warmup_steps"]) if k["warmup_steps"] > 0 else 1.0
            return start + (base - start) * frac
        if self.name == "cosine":
            end = k[f"{which}_end"]
            return end + (base - end) * (1.0 + math.cos(math.pi * _clip(step / k["total_steps"]))) / 2.0
        if self.name == "step":
            values = k[f"{which}_values"]
            if values is None:
                return base
            passed = [v for m, v in zip(k["milestones"], values, strict=True) if step >= m]
            return float(passed[-1]) if passed else base
        raise ValueError(self.name)

    def __call__(self, step: int) -> tuple[float, float]:
        return self.value("rho", step), self.value("gamma", step)


def _require_list(cfg, key: str, length: int, low: float | None, high: float | None) -> None:
    values = select(cfg, key)
    if values is None:
        return
    ok = hasattr(values, "__len__") and not isinstance(values, str) and len(values) == length and all(
        isinstance(v, (int, float)) and not isinstance(v, bool)
        and (low is None or v >= low) and (high is None or v <= high) for v in values)
    if not ok:
        rng = f"in [{low}, {high if high is not None else 'inf'}]"
        raise ConfigError(key, f"must be null or a list of {length} numbers {rng} (one per milestone), got {values!r}")


def validate_schedule(cfg) -> None:
    """Check the keys of ``cfg.noise`` for its schedule (``noise.name`` has been checked)."""
    name = cfg.noise.name
    if name == "linear_warmup":
        require_int(cfg, "noise.warmup_steps", 0)
        require_number(cfg, "noise.rho_start", 0, 1)
        require_number(cfg, "noise.gamma_start", 0)
    elif name == "cosine":
        require_int(cfg, "noise.total_steps", 1, optional=True)
        require_number(cfg, "noise.rho_end", 0, 1)
        require_number(cfg, "noise.gamma_end", 0)
    elif name == "step":
        milestones = select(cfg, "noise.milestones")
        ok = hasattr(milestones, "__len__") and not isinstance(milestones, str) and len(milestones) > 0 and all(
            isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones)
        if not ok or list(milestones) != sorted(set(milestones)):
            raise ConfigError("noise.milestones",
                              f"must be a non-empty increasing list of steps >= 0, got {milestones!r}")
        _require_list(cfg, "noise.rho_values", len(milestones), 0, 1)
        _require_list(cfg, "noise.gamma_values", len(milestones), 0, None)
