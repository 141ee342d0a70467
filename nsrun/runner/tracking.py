"""Experiment trackers beside the run directory's own logs (which stay the source of truth, see
:mod:`nsrun.runner.rundir`): ``logger=none`` (:class:`NullLogger`) or ``logger=wandb``
(:mod:`nsrun.runner.wandb_logger`). A tracker has ``log(row, step)``, ``summary(values)`` and
``finish(exit_code)``; :func:`onset_summary` is what a tracker's run summary adds to the last row."""

from __future__ import annotations

import math
from pathlib import Path

SUMMARY_THRESHOLDS = (0.95, 0.99)


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


def onset_summary(run_dir: Path) -> dict:
    """The run's onsets read back from its local logs, for a tracker's run summary (keys ``onset/...``): at each
    of :data:`SUMMARY_THRESHOLDS` of val_acc the onset step and seconds (None unless reached) and its status,
    reached | not reached | unknown | failed, as compare says it (:func:`nsrun.runner.outcome.settle_onset`: a
    run its stop rule ended at val_acc >= 0.95 has an unknown 0.99 onset, one that gave up has not reached it)."""
    from nsrun.runner.outcome import settle_onset
    from nsrun.runner.rundir import RunDir
    from nsrun.science.onsets import OnsetRule, run_onsets

    d = RunDir(run_dir)
    rows, timing, info = d.read_metrics(), d.read_timing(), d.done_info()
    if not rows:
        return {}
    out = {"train_seconds": timing[-1].get("train_seconds")} if timing else {}
    for threshold in SUMMARY_THRESHOLDS:
        name = f"val_acc{round(threshold * 100)}"
        onsets = settle_onset(run_onsets(rows, timing, threshold=threshold), info.outcome if info else None,
                              OnsetRule("val_acc", threshold))
        out[f"onset/{name}"] = onsets.onset_step
        out[f"onset/{name}_seconds"] = onsets.onset_seconds if math.isfinite(onsets.onset_seconds) else None
        out[f"onset/{name}_status"] = onsets.onset_status
        if onsets.stab_key is not None:
            out["onset/stab_fall"] = onsets.stab_onset_step
            out[f"onset/stab_lag_{name}"] = onsets.lag_steps
    return out
