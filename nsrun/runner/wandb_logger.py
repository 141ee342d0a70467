"""``logger=wandb``: Weights & Biases beside the local files (which stay the source of truth).

* Mode (``logger.mode: null``) follows wandb's own conventions: ``WANDB_MODE`` if set, else online when
  wandb finds credentials (``WANDB_API_KEY``, ``~/.netrc``, ``wandb login``), else offline. Nothing ever
  prompts: online without credentials runs offline; online with the server unreachable (a TCP probe,
  skipped behind a proxy) runs offline at once; an online init that fails anyway falls back to offline;
  any other wandb failure disables the logger with one warning. Training never stops because of wandb.
* The run id is the run directory's deterministic id (stored in the checkpoint), with ``resume="allow"``:
  a resumed or requeued run continues the same wandb run.
* Group: ``logger.group``, or for a multirun job the sweep directory (the parent of the job's run
  directory, relative to the launch directory), so all jobs of one sweep share it; seeds trained in one
  process (``train.parallel_seeds``) outside a sweep share their job directory.
* Logged at init: the resolved config, the Hydra overrides, the git commit and the run directory. Every
  metric is logged at its training step (one step axis for stability and validation curves). At the
  end the summary holds the last row plus the onsets of :func:`nsrun.science.onsets.run_onsets` (``onset/...``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import OmegaConf

log = logging.getLogger("nsrun")

LEGACY_MODES = {"dryrun": "offline", "run": "online"}
SUMMARY_THRESHOLDS = (0.95, 0.99)
MAX_GROUP_LENGTH = 128
# process-wide: open runs (several at once when seeds train in one process), and whether the server
# was found unreachable (later jobs of a sweep then go offline at once instead of waiting again)
_open_runs: set[str] = set()
_server_unreachable = False


def has_credentials() -> bool:
    """Whether wandb would find credentials without prompting (env, netrc, settings); no network."""
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        host = wandb_setup.singleton().settings.base_url
        return wbauth.authenticate_session(host=host, source="nsrun", prompt=False, update_session=False) is not None
    except Exception:
        return bool(os.environ.get("WANDB_API_KEY"))


def resolve_mode(configured: str | None) -> str:
    """The mode wandb will run in: the configured one, else WANDB_MODE, else online iff logged in;
    online without credentials becomes offline (wandb would prompt or fail)."""
    mode = configured or os.environ.get("WANDB_MODE") or None
    mode = LEGACY_MODES.get(mode, mode)
    if mode not in ("online", "offline", "disabled", "shared"):
        mode = None
    credentials = has_credentials()
    if mode is None:
        mode = "online" if credentials else "offline"
    if mode in ("online", "shared") and not credentials:
        log.warning("wandb: %s mode asked for but no API key is configured; logging offline", mode)
        mode = "offline"
    return mode


def server_reachable(timeout: float = 5.0) -> bool:
    """Whether a TCP connection to wandb's server opens (True behind a proxy, which wandb would use)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    try:
        from wandb.sdk import wandb_setup

        url = urlparse(os.environ.get("WANDB_BASE_URL") or wandb_setup.singleton().settings.base_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def _hydra_job_dir(run_dir: Path) -> Path | None:
    """The directory holding the run's ``.hydra/``: the run directory, or its parent for the per-seed
    directories ``RUN_DIR/seed_S`` of ``train.parallel_seeds``."""
    for job_dir in (run_dir, run_dir.parent):
        if (job_dir / ".hydra" / "hydra.yaml").exists():
            return job_dir
    return None


def sweep_group(run_dir: Path) -> str | None:
    """The wandb group a run belongs to by default: the sweep directory of a multirun job, or the job
    directory of seeds trained together (``train.parallel_seeds``); None for a single run."""
    run_dir = Path(run_dir).resolve()
    job_dir = _hydra_job_dir(run_dir)
    if job_dir is None:
        return None
    try:
        hydra_cfg = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra
        multirun = str(hydra_cfg.mode) in ("MULTIRUN", "RunMode.MULTIRUN")
        cwd = Path(hydra_cfg.runtime.cwd).resolve()
    except Exception:
        return None
    if multirun:
        group_dir = job_dir.parent
    elif job_dir != run_dir:
        group_dir = job_dir
    else:
        return None
    try:
        group = str(group_dir.relative_to(cwd))
    except ValueError:
        group = str(group_dir)
    return group if len(group) <= MAX_GROUP_LENGTH else "..." + group[-(MAX_GROUP_LENGTH - 3):]


def hydra_overrides(run_dir: Path) -> list[str]:
    job_dir = _hydra_job_dir(Path(run_dir).resolve())
    if job_dir is None:
        return []
    path = job_dir / ".hydra" / "overrides.yaml"
    try:
        return [str(o) for o in OmegaConf.load(path)] if path.exists() else []
    except Exception:
        return []


def git_commit() -> str | None:
    """The commit of the nsrun source tree (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def onset_summary(run_dir: Path, stop_rule=None) -> dict:
    """Onsets of the run read back from its local logs, keyed for the wandb run table. A run that its stop rule
    (``stop_rule``, a StopRule) ended has no onset at a level stricter than the rule's (unknown: None), and one
    that gave up has none at all."""
    from nsrun.runner.rundir import RunDir
    from nsrun.runner.stopping import onset_from_reason
    from nsrun.science.onsets import run_onsets

    run_dir = Path(run_dir)
    rows, timing = RunDir(run_dir).read_metrics(), RunDir(run_dir).read_timing()
    if not rows:
        return {}
    info = RunDir(run_dir).done_info()
    outcome = onset_from_reason(info["reason"]) if info else None  # True: onset rule, False: gave up
    out = {}
    for threshold in SUMMARY_THRESHOLDS:
        name = f"val_acc{round(threshold * 100)}"
        onsets = run_onsets(rows, timing, threshold=threshold)
        if outcome is False or (outcome and stop_rule is not None and not (
                stop_rule.metric == "val_acc" and stop_rule.direction == "above" and stop_rule.level >= threshold)):
            onsets = {**onsets, "onset_step": None, "onset_seconds": math.inf}
        out[f"onset/{name}"] = onsets["onset_step"]
        seconds = onsets["onset_seconds"]
        out[f"onset/{name}_seconds"] = seconds if math.isfinite(seconds) else None
        if onsets["stab_key"] is not None:
            out["onset/stab_fall"] = onsets["stab_onset_step"]
            out[f"onset/stab_lag_{name}"] = onsets["lag_steps"]
    if timing:
        out["train_seconds"] = timing[-1].get("train_seconds")
    return out


class WandbLogger:
    """Mirrors each metrics row to a wandb run; never raises (a wandb failure disables it, once)."""

    def __init__(self, cfg, run_dir: Path, run_id: str | None = None, stop_rule=None):
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.run = None
        self.stop_rule = stop_rule  # the run's StopRule (onsets at stricter levels are unknown once it fired)
        try:
            self.run = self._init(cfg)
        except Exception as e:
            log.warning("wandb: logging disabled for this run (%s: %s)", type(e).__name__, str(e).splitlines()[0])

    def _init(self, cfg):
        import wandb

        lc = cfg.logger
        mode = resolve_mode(lc.mode)
        wandb_dir = Path(lc.dir) if lc.dir else self.run_dir
        wandb_dir.mkdir(parents=True, exist_ok=True)
        config = OmegaConf.to_container(cfg, resolve=True)
        config["nsrun"] = {"hydra_overrides": hydra_overrides(self.run_dir), "git_commit": git_commit(),
                           "run_dir": str(self.run_dir.resolve())}
        kwargs = dict(project=lc.project, entity=lc.entity, group=lc.group or sweep_group(self.run_dir),
                      job_type=lc.job_type, tags=list(lc.tags or []), dir=str(wandb_dir), id=self.run_id,
                      resume="allow", config=config, reinit="create_new",  # several live runs: train.parallel_seeds
                      settings=wandb.Settings(console="off"))
        global _server_unreachable
        if mode in ("online", "shared") and (_server_unreachable or not server_reachable()):
            if not _server_unreachable:
                log.warning("wandb: server unreachable; logging offline (upload later with `wandb sync`)")
            _server_unreachable = True
            mode = "offline"
        try:
            run = wandb.init(mode=mode, **kwargs)
        except Exception as e:
            if mode not in ("online", "shared") or _open_runs:
                raise
            log.warning("wandb: online init failed (%s); logging offline instead", str(e).splitlines()[0])
            _server_unreachable = True
            wandb.teardown()  # the failed run still holds its id in wandb's service
            run = wandb.init(mode="offline", **kwargs)
        _open_runs.add(run.id)
        run.config.update(config, allow_val_change=True)
        for key, best in (("val_acc", "max"), ("val_loss", "min"), ("train_loss", "min"), ("val_ppl", "min")):
            run.define_metric(key, summary=f"{best},last")
        return run

    def _close(self, exit_code: int) -> None:
        _open_runs.discard(self.run.id)
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as e:
            log.warning("wandb: finish failed (%s)", e)
        self.run = None

    def _disable(self, what: str, e: Exception) -> None:
        log.warning("wandb: %s failed, logging disabled for the rest of this run (%s)", what, e)
        self._close(1)

    def log(self, row: dict, step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=step)
        except Exception as e:
            self._disable("log", e)

    def summary(self, values: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update({"final_step": values.get("step"), **onset_summary(self.run_dir, self.stop_rule)})
        except Exception as e:
            self._disable("summary", e)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self._close(exit_code)
