"""The sections without options: ``train`` (the loop), ``eval`` (loss and accuracy) and ``stability`` (the
stability logged at every eval step), and the run's ``seed``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from nsrun.runner.config.checks import (
    DEVICE_RE,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_subset,
    is_int,
    is_list,
    is_number,
)
from nsrun.runner.config.schema import KeyWithoutEffect, describe, option, section
from nsrun.runner.errors import ConfigError

describe("train", "the training loop: steps, batches, eval and checkpoint cadence, device, threads, seeds")
describe("eval", "loss and accuracy at every eval step: batch size, fixed subset per split")
describe("stability", "noise stability logged at every eval step (nsrun/science/stability/monitor.py)")

PROGRESS = ("auto", "bar", "log", "none")
PARALLEL_BACKENDS = ("auto", "vmap", "loop")


@option("train")
@dataclass
class TrainConfig:
    steps: int = MISSING
    eval_every: int = MISSING
    checkpoint_every: int = MISSING
    batch_size: int | None = MISSING
    device: str = MISSING
    threads: Any = MISSING  # auto | an integer >= 1 | null
    deterministic: bool = MISSING
    progress: str = MISSING
    parallel_seeds: int = MISSING
    parallel_backend: str = MISSING
    compile: bool = MISSING

    def check(self) -> None:
        check_int("train.steps", self.steps, 1)
        check_int("train.eval_every", self.eval_every, 1)
        check_int("train.checkpoint_every", self.checkpoint_every, 1)
        check_int("train.batch_size", self.batch_size, 1, optional=True)
        if self.threads != "auto" and not (self.threads is None or is_int(self.threads) and self.threads >= 1):
            raise ConfigError("train.threads", f"must be auto, an integer >= 1 or null, got {self.threads!r}")
        check_bool("train.deterministic", self.deterministic)
        check_choice("train.progress", self.progress, PROGRESS)
        check_int("train.parallel_seeds", self.parallel_seeds, 1)
        check_choice("train.parallel_backend", self.parallel_backend, PARALLEL_BACKENDS)
        check_bool("train.compile", self.compile)
        if self.compile and self.parallel_seeds > 1 and self.parallel_backend != "loop":
            raise ConfigError("train.compile", "is not supported with train.parallel_seeds > 1 unless "
                                               "train.parallel_backend=loop")
        if not isinstance(self.device, str) or not DEVICE_RE.match(self.device):
            raise ConfigError("train.device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def preflight(self) -> None:
        """A CUDA device is present when one is asked for."""
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("train.device", f"{self.device} requested but no CUDA device is available; "
                                                  "use auto or cpu")


@option("eval")
@dataclass
class EvalConfig:
    batch_size: int = MISSING
    n_examples: int | None = MISSING

    def check(self) -> None:
        check_int("eval.batch_size", self.batch_size, 1)
        check_int("eval.n_examples", self.n_examples, 1, optional=True)


@option("stability")
@dataclass
class StabilityConfig:
    enabled: bool = MISSING
    rhos: list[float] = MISSING
    noises: list[str] = MISSING
    splits: list[str] = MISSING
    n_examples: int | None = MISSING
    n_repeats: int = MISSING
    sensitivity: bool = MISSING
    sensitivity_positions: int | None = MISSING
    per_layer: bool = MISSING
    sigma: float | None = MISSING
    gaussian_on: str = MISSING
    exact: bool = MISSING

    def check(self) -> None:
        from nsrun.science.stability.monitor import SPLITS
        from nsrun.science.stability.noise import GAUSSIAN_ON, NOISES

        check_bool("stability.enabled", self.enabled)
        check_subset("stability.noises", self.noises, NOISES)
        check_subset("stability.splits", self.splits, SPLITS)
        rhos = self.rhos
        if not is_list(rhos) or not rhos or not all(is_number(r) and 0 <= r <= 1 for r in rhos):
            raise ConfigError("stability.rhos", f"must be a non-empty list of numbers in [0, 1], got {rhos!r}")
        check_int("stability.n_examples", self.n_examples, 1, optional=True)
        check_int("stability.n_repeats", self.n_repeats, 1)
        check_bool("stability.sensitivity", self.sensitivity)
        check_int("stability.sensitivity_positions", self.sensitivity_positions, 1, optional=True)
        check_bool("stability.per_layer", self.per_layer)
        check_number("stability.sigma", self.sigma, 0, low_open=True, optional=True)
        check_choice("stability.gaussian_on", self.gaussian_on, GAUSSIAN_ON)
        if "gaussian" not in self.noises:
            for key, unused in (("sigma", None), ("gaussian_on", "resampleable")):
                if getattr(self, key) != unused:
                    raise KeyWithoutEffect(f"stability.{key}", "has no effect without gaussian in stability.noises; "
                                                               "add it, e.g. stability.noises=[token,gaussian]")
        check_bool("stability.exact", self.exact)
        if self.exact and not self.enabled:
            raise KeyWithoutEffect("stability.exact", "has no effect with stability.enabled=false")
        if self.exact and "token" not in self.noises:
            raise ConfigError("stability.exact", "is exact for token noise only (Gaussian noise has no exact form "
                                                 "on a finite grid); add token to stability.noises")


def exact_grid_size(task) -> int | None:
    """The number of inputs ``stability.exact`` enumerates for the task section ``task`` (K^P: K noise tokens at
    P resampleable positions), None for a task it cannot enumerate (text)."""
    from nsrun.science.stability.exact import grid_size

    if task.name == "modadd":
        every_position = task.resample == "all"
        return grid_size(task.p + every_position, 2 + every_position)
    if task.name == "parity":
        return grid_size(2, task.n_bits)
    return None


def check_exact_task(stability: StabilityConfig, task) -> None:
    """``stability.exact`` only for a task whose inputs can be enumerated (at most MAX_GRID of them)."""
    from nsrun.science.stability.exact import MAX_GRID

    if not stability.exact:
        return
    size = exact_grid_size(task)
    if size is None or size > MAX_GRID:
        has = "its inputs cannot be enumerated" if size is None else f"it has {size:,} inputs"
        raise ConfigError("stability.exact", f"needs a task with at most {MAX_GRID} inputs to enumerate (modadd "
                                             f"with p <= 251, or <= 37 with task.resample=all; parity with "
                                             f"n_bits <= 16); task={task.name}: {has}")


def monitor_settings(cfg):
    """The stability monitor's settings (``MonitorSettings``), or None when ``stability.enabled`` is false."""
    from nsrun.science.stability.monitor import MonitorSettings

    s = section(cfg, "stability")
    if not s.enabled:
        return None
    return MonitorSettings(rhos=tuple(s.rhos), noises=tuple(s.noises), splits=tuple(s.splits),
                           n_examples=s.n_examples, n_repeats=s.n_repeats, sensitivity=s.sensitivity,
                           sensitivity_positions=s.sensitivity_positions, per_layer=s.per_layer, sigma=s.sigma,
                           gaussian_on=s.gaussian_on, exact=s.exact)
