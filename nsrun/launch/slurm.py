"""Sweeps through submitit (SLURM or local processes): job tracking, the failure report, SLURM facts per run.

The Hydra launcher plugin in ``hydra_plugins/nsrun_launcher`` submits a sweep as a submitit job array
(exactly as hydra-submitit-launcher does) and then calls :func:`wait_and_report`, which

* waits for *every* job of the sweep, without needing SLURM accounting: a job is finished when its
  result pickle exists or when ``squeue`` reports it in a final state (or no longer knows it). ``sacct``
  fails on clusters without slurmdbd (such as ``launch/slurm-local.sh``), where submitit's own wait never
  ends for a job that died without a result;
* lets a failing job leave the others running, and reports at the end one line per failed job with its
  overrides, the reason and the path of its log, then exits with status 1.

Inside a job, :func:`record_slurm_env` appends the job's SLURM facts (job id, restart count, node, ...)
to ``slurm.jsonl`` in the run directory, one row per start (a requeued job adds a row).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

SLURM_FILE = "slurm.jsonl"
SLURM_VARS = (
    "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NAME",
    "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURMD_NODENAME", "SLURM_CPUS_PER_TASK", "SLURM_GPUS_ON_NODE",
    "SLURM_JOB_GPUS", "SLURM_CLUSTER_NAME", "SLURM_SUBMIT_DIR",
)
# squeue states in which a job may still produce its result (anything else is final)
ACTIVE_STATES = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "CONFIGURING",
    "COMPLETING", "PREEMPTED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
}
RESULT_GRACE_S = 10.0  # after a job ends, how long its result pickle may take to appear (shared file systems)


def silence_schema_warning() -> None:
    """conf/hydra/launcher/submitit_{slurm,local}.yaml hold nsrun's defaults under the plugin's own names, so
    Hydra validates them against the plugin's schemas; Hydra 1.3 still does, with a deprecation warning."""
    warnings.filterwarnings("ignore", message=r"(?s).*'hydra/launcher/submitit_(slurm|local)' is validated against")


def submitit_executor() -> str | None:
    """``"slurm"`` or ``"local"`` inside a submitit job, else None."""
    return os.environ.get("SUBMITIT_EXECUTOR") or None


def record_slurm_env(run_dir: str | Path) -> dict | None:
    """Append this process's SLURM facts to ``run_dir/slurm.jsonl`` (nothing outside a SLURM job)."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid()}
    row.update({k: os.environ[k] for k in SLURM_VARS if k in os.environ})
    row.setdefault("SLURM_RESTART_COUNT", "0")
    path = Path(run_dir) / SLURM_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def squeue_states(job_ids) -> dict[str, str] | None:
    """``{"<array>_<task>" or "<job>": STATE}`` for the given (array) job ids, from squeue; jobs that squeue
    no longer knows are absent. None when squeue could not be asked (the caller keeps waiting)."""
    masters = sorted({str(j).split("_")[0] for j in job_ids})
    if not masters:
        return {}
    cmd = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", "--jobs=" + ",".join(masters)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        if "Invalid job id" in res.stderr:  # every listed job was purged: all of them are over
            return {}
        return None
    states = {}
    for line in res.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid:
            states[jid] = state.strip().split()[0] if state.strip() else "UNKNOWN"
    return states


def _wait_slurm(jobs, poll_s: float = 1.0) -> dict[int, str]:
    """Wait until every SLURM job has a result pickle or has ended; returns {index: final state} of those
    that ended without a result."""
    pending = set(range(len(jobs)))
    ended_at: dict[int, float] = {}
    ended_state: dict[int, str] = {}
    t0 = last_query = time.time()
    states: dict[str, str] | None = None
    while pending:
        now = time.time()
        # ask squeue often at first, then at most every 30 s (like submitit's own watcher)
        if states is None or now - last_query >= min(30.0, 2.0 + (now - t0) / 10):
            states = squeue_states([jobs[i].job_id for i in pending])
            last_query = now
        for i in list(pending):
            job = jobs[i]
            if job.paths.result_pickle.exists():
                pending.discard(i)
                continue
            if states is None:
                continue
            state = states.get(str(job.job_id), "GONE")
            if state in ACTIVE_STATES:
                ended_at.pop(i, None)
                continue
            ended_at.setdefault(i, now)
            ended_state[i] = state
            if now - ended_at[i] >= RESULT_GRACE_S:
                pending.discard(i)
        if pending:
            time.sleep(poll_s)
    return {i: s for i, s in ended_state.items() if not jobs[i].paths.result_pickle.exists()}


def _wait_other(jobs, poll_s: float = 1.0) -> dict[int, str]:
    for job in jobs:
        while not job.done():
            time.sleep(poll_s)
    return {}


def _one_line(text: str) -> str:
    """The most telling line of an error message or traceback (the last ``SomeError: ...`` line)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt|Interrupted)\b.*", ln)]
    line = errors[-1] if errors else (lines[0] if lines else "unknown error")
    return line if len(line) <= 300 else line[:297] + "..."


def _log_path(job) -> Path:
    paths = job.paths
    err = paths.stderr
    return err if err.exists() and err.stat().st_size else paths.stdout


def wait_and_report(jobs, job_overrides, initial_job_idx: int, cluster: str):
    """Wait for all ``jobs`` (submitit jobs of one sweep batch) and return their Hydra ``JobReturn``s; when
    any failed, print one line per failed job (overrides, reason, log path) and exit with status 1."""
    from hydra.core.utils import JobStatus, filter_overrides
    from omegaconf import OmegaConf

    try:
        no_result = _wait_slurm(jobs) if cluster == "slurm" else _wait_other(jobs)
    except KeyboardInterrupt:
        ids = " ".join(sorted({str(j.job_id).split("_")[0] for j in jobs}))
        hint = f" (scancel {ids} stops them)" if cluster == "slurm" else ""
        print(f"nsrun: interrupted while waiting; the {len(jobs)} submitted jobs keep running{hint}",
              file=sys.stderr)
        sys.exit(130)

    returns, failures = [], []
    for i, job in enumerate(jobs):
        num = initial_job_idx + i
        overrides = " ".join(filter_overrides(job_overrides[i])) or "(no overrides)"
        if i in no_result:
            failures.append((num, overrides, f"job {job.job_id} ended ({no_result[i]}) without a result",
                             _log_path(job)))
            continue
        try:
            ret = job.results()[0]
        except Exception as e:  # the job raised outside the task function, or its result could not be read
            failures.append((num, overrides, _one_line(str(e)), _log_path(job)))
            continue
        if ret.status == JobStatus.FAILED:
            err = ret._return_value
            reason = f"{type(err).__name__}: {_one_line(str(err))}"
            run_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
            failures.append((num, overrides, reason, f"{_log_path(job)}" + (f", {run_dir}" if run_dir else "")))
            continue
        returns.append(ret)
    if failures:
        done = len(jobs) - len(failures)
        print(f"nsrun: {len(failures)} of {len(jobs)} jobs failed ({done} finished):", file=sys.stderr)
        for num, overrides, reason, log in failures:
            print(f"  #{num} {overrides}: {reason}; log: {log}", file=sys.stderr)
        sys.exit(1)
    logging.getLogger(__name__).info(f"all {len(jobs)} jobs finished")
    return returns
