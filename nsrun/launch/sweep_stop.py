"""A sweep stopped by a signal: which jobs finished, which stopped (at which step), which never started.

Hydra runs each job of a sweep as a task function and catches its ``Exception`` to go on with the next job. A
stop signal must end the whole sweep, so a job that a signal stopped raises :class:`SweepStopped`, a
``BaseException`` that Hydra's launcher and sweeper let through, up to the command; the command prints
:func:`summary` (one line per job) and exits with ``128 + signal``. The jobs' outcomes are recorded in this
process as they end (by the job itself under Hydra's basic launcher, by the pool's parent for a local pool).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nsrun.runner.signals import signal_name

RUNNING, FINISHED, STOPPED, FAILED, NOT_STARTED = "running", "finished", "stopped", "failed", "not started"


@dataclass
class JobOutcome:
    num: int  # hydra.job.num
    overrides: list[str]
    state: str  # running | finished | stopped | failed | not started
    step: int | None = None  # STOPPED: the step of its checkpoint
    error: str = ""  # FAILED: what the job raised


@dataclass
class SweepRecord:
    jobs: dict[int, JobOutcome] = field(default_factory=dict)
    rerun: str = "rerun the same command to resume"


RECORD = SweepRecord()


class SweepStopped(BaseException):
    """A stop signal ended this sweep: no further job starts. ``outcome``: the job that raised it, if one did."""

    def __init__(self, signum: int, outcome: JobOutcome | None = None):
        super().__init__(signum, outcome)
        self.signum, self.outcome = int(signum), outcome


def record(outcome: JobOutcome) -> None:
    RECORD.jobs[outcome.num] = outcome


def rerun_hint(kind: str, path: str, hydra_overrides) -> str:
    """How to resume: the same command, with ``hydra.{kind}.dir`` (run or sweep) when the command line did not
    name it (its default holds the date and time, and a rerun would start afresh elsewhere)."""
    key = f"hydra.{kind}.dir"
    if any(str(o).split("=", 1)[0].lstrip("+") == key for o in hydra_overrides or ()):
        return "rerun the same command to resume"
    return f"rerun the same command with {key}={path} to resume"


def _varying(jobs: list[list[str]]) -> list[list[str]]:
    """Each job's overrides that not every job shares (``seed=1``), Hydra's own left out: what tells the jobs
    apart."""
    jobs = [[o for o in j if not o.lstrip("+~").startswith("hydra")] for j in jobs]
    common = set.intersection(*(set(j) for j in jobs)) if jobs else set()
    return [[o for o in j if o not in common] for j in jobs]


def _state_text(outcome: JobOutcome | None) -> str:
    if outcome is None or outcome.state == NOT_STARTED:
        return "not started"
    if outcome.state == STOPPED:
        return f"stopped at step {outcome.step}; checkpoint written"
    if outcome.state == RUNNING:
        return "stopped at once, without a new checkpoint; it resumes from its last one"
    if outcome.state == FAILED:
        return f"failed: {outcome.error}"
    return outcome.state


def summary(signum: int, planned: list[list[str]] | None = None) -> list[str]:
    """The lines that report a stopped sweep: the signal, one line per job (``planned``: the override lists of
    all its jobs, when they are known beforehand; jobs without an outcome did not start), how to resume."""
    jobs = dict(RECORD.jobs)
    for num, overrides in enumerate(planned or ()):
        jobs.setdefault(num, JobOutcome(num, list(overrides), NOT_STARTED))
    nums = sorted(jobs)
    labels = _varying([jobs[n].overrides for n in nums])
    lines = [f"nsrun: sweep stopped by signal {signum} ({signal_name(signum)}); no further job started"]
    for n, label in zip(nums, labels, strict=True):
        lines.append(f"  #{n}{' ' + ' '.join(label) if label else ''}: {_state_text(jobs[n])}")
    if planned is None:
        lines.append("  (the sweeper chooses its jobs as it goes: no other job started)")
    lines.append(f"nsrun: {RECORD.rerun}")
    return lines
