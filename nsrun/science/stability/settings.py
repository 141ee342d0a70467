"""The stability monitor's settings (the ``stability:`` section of conf/config.yaml): plain values, checked on
creation, with no torch import, so that the runner's config schema can be this dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

NOISES = ("token", "gaussian")
GAUSSIAN_ON = ("resampleable", "all")  # the positions Gaussian noise perturbs: the task's resampleable ones, or all
SPLITS = ("train", "val")


@dataclass
class MonitorSettings:
    """What :func:`stability_metrics` logs (module docstring); ``enabled`` false: nothing. ``n_examples`` None:
    the whole split; ``sensitivity_positions`` None: every resampleable position; ``sigma`` None: the RMS entry of
    the noise tokens' embeddings **[ours]**; ``gaussian_on``: Gaussian noise on the resampleable positions or all;
    ``exact``: also the exact token-noise values (needs token in ``noises``). The runner's schema of the
    ``stability:`` section (nsrun/runner/config/run.py), so a bad value raises ``ValueError("<field>: ...")``."""

    enabled: bool = True
    rhos: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.9])
    noises: list[str] = field(default_factory=lambda: list(NOISES))
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    n_examples: int | None = 2048
    n_repeats: int = 1
    sensitivity: bool = True
    sensitivity_positions: int | None = None
    per_layer: bool = False
    sigma: float | None = None
    gaussian_on: str = "resampleable"
    exact: bool = False

    def __post_init__(self):
        for name, values, allowed in (("noises", self.noises, NOISES), ("splits", self.splits, SPLITS)):
            if not all(v in allowed for v in values):
                raise ValueError(f"{name}: must be a list drawn from {', '.join(allowed)}, got {list(values)!r}")
        if not self.rhos or not all(0 <= r <= 1 for r in self.rhos):
            raise ValueError(f"rhos: must be a non-empty list of numbers in [0, 1], got {list(self.rhos)!r}")
        for name in ("n_examples", "n_repeats", "sensitivity_positions"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be an integer >= 1{'' if name == 'n_repeats' else ' or null'}, "
                                 f"got {value!r}")
        if self.sigma is not None and self.sigma <= 0:
            raise ValueError(f"sigma: must be a number in (0, inf) or null, got {self.sigma!r}")
        if self.gaussian_on not in GAUSSIAN_ON:
            raise ValueError(f"gaussian_on: must be one of {', '.join(GAUSSIAN_ON)}, got {self.gaussian_on!r}")
        if self.exact and "token" not in self.noises:
            raise ValueError("exact: is exact for token noise only (Gaussian noise has no exact form on a finite "
                             "grid); add token to noises")
