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
* ``on_fit``:        off until the training set is fitted, then on for good. With ``s0`` the first step at which
  the accuracy of the clean training batch (from the logits the objective already has) is ``>= train_acc``
  (default 1.0): ``gamma(s) = 0`` for ``s < s0`` (and the noisy pass is skipped: no extra cost), and
  ``gamma(s) = gamma * ramp(s)`` for ``s >= s0`` with ``ramp(s) = min(1, (s - s0 + 1) / ramp_steps)``
  (``ramp_steps`` 0: ``ramp = 1``); ``rho(s) = rho`` throughout. Keys ``train_acc``, ``ramp_steps``.

Schedules are pure functions of the step and, for ``on_fit``, of the switch step ``s0`` (``on_since``), which
the regulariser latches and checkpoints, so a resumed run sees exactly the same values.
"""

from __future__ import annotations

import math

SCHEDULE_NAMES = ("constant", "linear_warmup", "cosine", "step", "on_fit")


def _clip(u: float) -> float:
    return min(max(u, 0.0), 1.0)


class Schedule:
    """``schedule(step, on_since=None) -> (rho, gamma)``; ``on_since``: the switch step of ``on_fit`` (None: not
    fitted yet). ``fit_level``: the training accuracy that switches ``on_fit`` on (None for the other
    schedules)."""

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
        if name == "on_fit":
            self.keys.setdefault("train_acc", 1.0)
            self.keys.setdefault("ramp_steps", 0)
            if not 0 < float(self.keys["train_acc"]) <= 1:
                raise ValueError(f"train_acc must be in (0, 1], got {self.keys['train_acc']!r}")
            if int(self.keys["ramp_steps"]) < 0:
                raise ValueError(f"ramp_steps must be >= 0, got {self.keys['ramp_steps']!r}")
        self.fit_level = float(self.keys["train_acc"]) if name == "on_fit" else None

    def value(self, which: str, step: int, on_since: int | None = None) -> float:
        base = self.rho if which == "rho" else self.gamma
        k = self.keys
        if self.name == "constant":
            return base
        if self.name == "on_fit":
            if which == "rho":
                return base
            if on_since is None or step < on_since:
                return 0.0
            ramp = k["ramp_steps"]
            return base * min(1.0, (step - on_since + 1) / ramp) if ramp > 0 else base
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

    def __call__(self, step: int, on_since: int | None = None) -> tuple[float, float]:
        return self.value("rho", step, on_since), self.value("gamma", step, on_since)


