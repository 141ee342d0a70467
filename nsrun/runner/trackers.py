"""Experiment trackers beside the run directory's own logs (which stay the source of truth, see
:mod:`nsrun.runner.rundir`). A tracker has ``log(row, step)``, ``summary(values)`` and ``finish(exit_code)``;
:func:`onset_summary` is what a tracker's run summary adds to the last row.

``logger=none``: :class:`NullLogger`, nothing beyond the local files.

``logger=wandb``: :class:`WandbLogger`, Weights & Biases in wandb's own terms (docs/tracking.md):

* mode: ``logger.mode``, else wandb's (``WANDB_MODE``, ``wandb offline``); online only where ``wandb.login``
  finds an API key without prompt or network, else offline. An online init with no answer within
  ``logger.timeout`` s (``init_timeout``) logs offline, and so do the process's later runs; ``finish_timeout``
  bounds the upload at the end. A wandb failure disables the logger for the run: training never stops for it;
* wandb prints nothing (``silent``); nsrun says in one line where the run goes (offline: ``wandb sync DIR``);
* run id: the run directory's, ``resume="allow"``; group: the sweep (:func:`hydra_record`); every metric is
  plotted against the training ``step`` (``define_metric``); the summary adds best values and the onsets.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger("nsrun")

BEST = {"val_acc": "max", "val_loss": "min", "train_loss": "min", "val_ppl": "min"}
MAX_GROUP_LENGTH = 128
SUMMARY_THRESHOLDS = (0.95, 0.99)  # the val_acc levels of the onsets in a run's summary
SOURCE_TREE = Path(__file__).resolve().parents[2]


def first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


def resolve_mode(configured: str | None) -> tuple[str, str]:
    """``(mode, why)``: the mode a run logs in, and why when offline. Nothing prompts."""
    import wandb

    settings = wandb.setup(wandb.Settings(silent=True)).settings
    mode = {"dryrun": "offline", "run": "online"}.get(configured or settings.mode, configured or settings.mode)
    if mode not in ("online", "shared"):
        return mode, f"logger.mode={mode}" if configured else f"wandb's mode is {mode}"
    if settings.mode != mode:
        wandb.setup(wandb.Settings(mode=mode))  # logger.mode wins over WANDB_MODE; wandb.login checks in this mode
    if wandb.login(prompt=False, verify=False):
        return mode, ""
    if configured or os.environ.get("WANDB_MODE"):
        log.warning("wandb: %s mode asked for but no API key is configured (`wandb login`); logging offline", mode)
    return "offline", "not logged in: `wandb login` logs online"


def hydra_record(run_dir: Path) -> tuple[str | None, list[str]]:
    """``(group, overrides)`` from the ``.hydra/`` of the run's job directory (the run directory, or its parent
    for the per-seed directories ``RUN_DIR/seed_S``). The group is the sweep directory of a multirun job or the
    job directory of seeds trained together, relative to the launch directory; None for a single run."""
    run_dir = Path(run_dir).resolve()
    job_dir = next((d for d in (run_dir, run_dir.parent) if (d / ".hydra" / "hydra.yaml").exists()), None)
    if job_dir is None:
        return None, []
    hydra = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra
    overrides_path = job_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_path)] if overrides_path.exists() else []
    multirun = str(hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")
    group_dir = job_dir.parent if multirun else job_dir if job_dir != run_dir else None
    if group_dir is None:
        return None, overrides
    cwd = Path(hydra.runtime.cwd).resolve()
    group = str(group_dir.relative_to(cwd) if group_dir.is_relative_to(cwd) else group_dir)
    return (group if len(group) <= MAX_GROUP_LENGTH else "..." + group[3 - MAX_GROUP_LENGTH:]), overrides


class WandbLogger:
    """Mirrors each metrics row to a wandb run; never raises (a wandb failure disables it, once)."""

    def __init__(self, cfg, run_dir: Path, run_id: str | None = None):
        self.run_dir, self.run = Path(run_dir), None
        try:
            self.run = self._init(cfg, run_id)
        except Exception as e:
            log.warning("wandb: logging disabled for this run (%s)", first_line(e))

    def _init(self, cfg, run_id: str | None):
        import wandb

        lc = cfg.logger
        mode, why = resolve_mode(lc.mode)
        group, overrides = hydra_record(self.run_dir)
        wandb_dir = Path(lc.dir) if lc.dir else self.run_dir
        wandb_dir.mkdir(parents=True, exist_ok=True)
        config = {**OmegaConf.to_container(cfg, resolve=True),
                  "nsrun": {"hydra_overrides": overrides, "run_dir": str(self.run_dir.resolve())}}
        settings = wandb.Settings(silent=True, init_timeout=lc.timeout, finish_timeout=lc.timeout,
                                  git_root=str(SOURCE_TREE))

        def init(mode: str):
            return wandb.init(mode=mode, project=lc.project, entity=lc.entity, group=lc.group or group,
                              job_type=lc.job_type, tags=list(lc.tags), dir=str(wandb_dir), id=run_id,
                              resume="allow", config=config, allow_val_change=True, reinit="create_new",
                              settings=settings)

        try:
            run = init(mode)
        except Exception as e:
            if mode not in ("online", "shared"):
                raise
            log.warning("wandb: no answer from %s within logger.timeout=%g s (%s)", wandb.setup().settings.base_url,
                        lc.timeout, first_line(e))
            wandb.teardown()  # the failed run holds its id in wandb's service
            wandb.setup(wandb.Settings(silent=True, mode="offline"))  # the later runs of this process: offline
            run, why = init("offline"), "server unreachable"
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
        for key, best in BEST.items():
            run.define_metric(key, step_metric="step", summary=f"{best},last")
        if run.offline:
            sync_dir = Path(os.path.relpath(run.settings.sync_dir)) if run.settings.sync_dir.startswith(
                os.getcwd() + os.sep) else run.settings.sync_dir
            log.info("wandb: offline (%s); upload with: wandb sync %s", why, sync_dir)
        elif mode != "disabled":
            log.info("wandb: %s", run.url)
        return run

    def _call(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn(self.run)
        except Exception as e:
            log.warning("wandb: %s failed, logging disabled for the rest of this run (%s)", what, first_line(e))
            self.finish(1)

    def log(self, row: dict, step: int) -> None:
        self._call("log", lambda run: run.log({**row, "step": step}))

    def summary(self, values: dict) -> None:
        self._call("summary", lambda run: run.summary.update(
            {"final_step": values.get("step"), **onset_summary(self.run_dir)}))

    def finish(self, exit_code: int = 0) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as e:
                log.warning("wandb: finish failed (%s)", first_line(e))


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
    from nsrun.science.onsets import OnsetRule, onsets_from_rows

    d = RunDir(run_dir)
    rows, timing, info = d.read_metrics(), d.read_timing(), d.done_info()
    if not rows:
        return {}
    out = {"train_seconds": timing[-1].get("train_seconds")} if timing else {}
    for threshold in SUMMARY_THRESHOLDS:
        name = f"val_acc{round(threshold * 100)}"
        onsets = settle_onset(onsets_from_rows(rows, timing, threshold=threshold), info.outcome if info else None,
                              OnsetRule("val_acc", threshold))
        out[f"onset/{name}"] = onsets.onset_step
        out[f"onset/{name}_seconds"] = onsets.onset_seconds if math.isfinite(onsets.onset_seconds) else None
        out[f"onset/{name}_status"] = onsets.onset_status
        if onsets.stab_key is not None:
            out["onset/stab_fall"] = onsets.stab_onset_step
            out[f"onset/stab_lag_{name}"] = onsets.lag_steps
    return out
