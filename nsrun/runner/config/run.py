"""The sections without options: ``train`` (the loop), ``eval`` (loss and accuracy) and ``stability`` (the
stability logged at every eval step), and the run's ``seed``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from nsrun.runner.config.checks import DEVICE_RE, at_least, one_of
from nsrun.runner.config.schema import GROUPS, KeyWithoutEffect, option, section
from nsrun.runner.errors import ConfigError
from nsrun.science.stability.settings import MonitorSettings

GROUPS["train"] = "the training loop: steps, batches, eval and checkpoint cadence, device, threads, seeds"
GROUPS["eval"] = "loss and accuracy at every eval step: batch size, fixed subset per split"
GROUPS["stability"] = "noise stability logged at every eval step (nsrun/science/stability/monitor.py)"

PROGRESS = ("auto", "bar", "log", "none")
PARALLEL_BACKENDS = ("auto", "vmap", "loop")


@option("train")
@dataclass
class TrainConfig:
    steps: int = at_least(1)
    eval_every: int = at_least(1)
    checkpoint_every: int = at_least(1)
    batch_size: int | None = at_least(1)
    device: str = MISSING
    threads: Any = MISSING  # auto | an integer >= 1 | null
    deterministic: bool = MISSING
    progress: str = one_of(*PROGRESS)
    parallel_seeds: int = at_least(1)
    parallel_backend: str = one_of(*PARALLEL_BACKENDS)
    compile: bool = MISSING

    def check(self) -> None:
        if self.threads != "auto" and not (self.threads is None or type(self.threads) is int and self.threads >= 1):
            raise ConfigError("train.threads", f"must be auto, an integer >= 1 or null, got {self.threads!r}")
        if self.compile and self.parallel_seeds > 1 and self.parallel_backend != "loop":
            raise ConfigError("train.compile", "is not supported with train.parallel_seeds > 1 unless "
                                               "train.parallel_backend=loop")
        if not DEVICE_RE.match(self.device):
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
    batch_size: int = at_least(1)
    n_examples: int | None = at_least(1)


@option("stability")
class StabilityConfig(MonitorSettings):
    """The stability monitor's settings (the science's dataclass, which checks their values) and the keys
    without effect."""

    def check(self) -> None:
        if "gaussian" not in self.noises:
            for key, unused in (("sigma", None), ("gaussian_on", "resampleable")):
                if getattr(self, key) != unused:
                    raise KeyWithoutEffect(f"stability.{key}", "has no effect without gaussian in stability.noises; "
                                                               "add it, e.g. stability.noises=[token,gaussian]")
        if self.exact and not self.enabled:
            raise KeyWithoutEffect("stability.exact", "has no effect with stability.enabled=false")


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


def monitor_settings(cfg) -> MonitorSettings | None:
    """The stability monitor's settings, or None when ``stability.enabled`` is false."""
    settings = section(cfg, "stability")
    return settings if settings.enabled else None
