"""Experiment trackers beside the run directory's own logs (which stay the source of truth, see
:mod:`nsrun.runner.rundir`): ``logger=none`` (:class:`NullLogger`) or ``logger=wandb``
(:mod:`nsrun.runner.wandb_logger`). A tracker has ``log(row, step)``, ``summary(values)`` and ``finish(exit_code)``."""

from __future__ import annotations

from pathlib import Path


class NullLogger:
    """``logger=none``: nothing beyond the local files."""

    run_id = None

    def __init__(self, cfg, run_dir: Path, run_id: str | None = None):
        self.run_id = run_id

    def log(self, row: dict, step: int) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass
