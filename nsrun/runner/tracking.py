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


def onset_summary(run_dir: Path, stop_rule=None) -> dict:
    """The run's onsets read back from its local logs, for a tracker's run summary (keys ``onset/...``). A run
    that its stop rule (``stop_rule``, a StopRule) ended has no onset at a level stricter than the rule's
    (unknown: None), and one that gave up has none at all."""
    from nsrun.runner.rundir import RunDir
    from nsrun.runner.stopping import onset_from_reason
    from nsrun.science.onsets import run_onsets

    d = RunDir(run_dir)
    rows, timing, info = d.read_metrics(), d.read_timing(), d.done_info()
    if not rows:
        return {}
    outcome = onset_from_reason(info["reason"]) if info else None  # True: onset rule, False: gave up
    out = {"train_seconds": timing[-1].get("train_seconds")} if timing else {}
    for threshold in SUMMARY_THRESHOLDS:
        name = f"val_acc{round(threshold * 100)}"
        onsets = run_onsets(rows, timing, threshold=threshold)
        if outcome is False or (outcome and stop_rule is not None and not (
                stop_rule.metric == "val_acc" and stop_rule.direction == "above" and stop_rule.level >= threshold)):
            onsets = {**onsets, "onset_step": None, "onset_seconds": math.inf}
        out[f"onset/{name}"] = onsets["onset_step"]
        out[f"onset/{name}_seconds"] = onsets["onset_seconds"] if math.isfinite(onsets["onset_seconds"]) else None
        if onsets["stab_key"] is not None:
            out["onset/stab_fall"] = onsets["stab_onset_step"]
            out[f"onset/stab_lag_{name}"] = onsets["lag_steps"]
    return out
