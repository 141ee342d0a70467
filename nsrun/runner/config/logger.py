"""``logger``: where metrics go besides the run directory's own files (which stay the source of truth)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from nsrun.runner.config.checks import in_range
from nsrun.runner.config.schema import GROUPS, option, section
from nsrun.runner.errors import ConfigError

GROUPS["logger"] = "an experiment tracker beside the local logs: wandb (offline unless logged in) or none"

WANDB_MODES = (None, "online", "offline", "disabled")


@option("logger", "none")
@dataclass
class NoLogger:
    """Local logs only: metrics.jsonl, timing.jsonl and .hydra/ in the run directory."""

    name: str = "none"

    def build(self, cfg, run_dir: Path, run_id: str | None):
        from nsrun.runner.trackers import NullLogger

        return NullLogger(cfg, run_dir, run_id)


@option("logger", "wandb")
@dataclass
class WandbLoggerConfig:
    """Weights & Biases (offline unless logged in; never prompts)."""

    name: str = "wandb"
    project: str | None = MISSING
    entity: str | None = MISSING
    group: str | None = MISSING
    job_type: str | None = MISSING
    tags: list[str] = MISSING
    mode: str | None = MISSING
    dir: str | None = MISSING
    timeout: float = in_range(0, low_open=True)

    def check(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ConfigError("logger.mode", f"must be null, online, offline or disabled, got {self.mode!r}")

    def build(self, cfg, run_dir: Path, run_id: str | None):
        from nsrun.runner.trackers import WandbLogger

        return WandbLogger(cfg, run_dir, run_id)


def build_logger(cfg, run_dir: Path, run_id: str | None = None):
    """The tracker of ``cfg.logger`` for the run in ``run_dir`` (``run_id``: its stable id, e.g. wandb's)."""
    return section(cfg, "logger").build(cfg, Path(run_dir), run_id)
