"""The thread policy: how many torch threads a run uses, and how idle OpenMP threads wait.

* ``train.threads: auto`` uses the cores this process may run on: the fewest of its CPU affinity, its cgroup's
  CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``) and ``SLURM_CPUS_PER_TASK``. A user's
  ``OMP_NUM_THREADS`` wins over ``auto``; an integer ``train.threads`` wins over both; ``null`` keeps torch's
  default (every core of the affinity mask, blind to quotas).
* Idle OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a wait policy. By
  default libgomp spins for a while after each parallel region; two processes that spin against each other on
  a shared machine each ran 4.5-10x slower than alone (0.38-1.28 s/step against 0.083 s; passive: 0.15-0.20).
  libgomp reads the variable once, when torch loads it, so :func:`prepare_environment` runs in the ``nsrun``
  entry point before torch is imported; child processes (sweep jobs, submitit) inherit it.

Nothing here imports torch at module level: the entry point calls it first.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

WAIT_POLICY_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")  # a user's choice of how threads wait
THREAD_COUNT_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
DEFAULT_WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
SET_BY_NSRUN = "NSRUN_SET_THREAD_ENV"  # the keys prepare_environment set, so that a job can record who chose them
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _up_to(base: Path, cgroup_path: str) -> list[Path]:
    """``base/cgroup_path`` and each of its parents up to ``base`` (a quota anywhere above binds too)."""
    d = base / cgroup_path.lstrip("/")
    dirs = [d, *d.parents]
    return [p for p in dirs if p == base or base in p.parents]


def _quota(text: str | None, period_text: str | None = None) -> float | None:
    """CPUs of one quota: v2 ``"QUOTA PERIOD"`` / ``"max PERIOD"``, or v1 quota ``-1`` / ``QUOTA`` with its period."""
    if text is None:
        return None
    parts = text.split()
    if period_text is not None:
        parts = [parts[0], period_text]
    if len(parts) != 2 or parts[0] in ("max", "-1"):
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs allowed by the tightest CPU quota of this process's cgroups (v1 or v2, the cgroup and its parents);
    None where there is none. The cgroup's own path and, as in a container that sees only its own cgroup, the
    controller's root are both read."""
    lines = (_read(proc_cgroup) or "").splitlines()
    limits = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2 (unified, or hybrid under /sys/fs/cgroup/unified)
            for base in (root, root / "unified"):
                for d in _up_to(base, path):
                    limits.append(_quota(_read(d / "cpu.max")))
        elif "cpu" in controllers.split(","):
            for base in {root / controllers, root / "cpu", root / "cpu,cpuacct"}:
                for d in _up_to(base, path):
                    limits.append(_quota(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")))
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def slurm_cpus(environ=None) -> int | None:
    value = (os.environ if environ is None else environ).get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def core_limits(environ=None, root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> dict:
    """Each limit on the cores this process may use: ``{"affinity", "cgroup", "slurm"}`` (None: no limit)."""
    return {"affinity": affinity_cores(), "cgroup": cgroup_cpu_limit(root, proc_cgroup),
            "slurm": slurm_cpus(environ)}


def available_cores(limits: dict | None = None) -> int:
    """The fewest cores any limit allows (a fractional quota rounds down), at least 1."""
    limits = core_limits() if limits is None else limits
    bounds = [math.floor(v) for v in limits.values() if v is not None]
    return max(1, min(bounds)) if bounds else 1


def wait_policy_env(environ) -> dict[str, str]:
    """The variables to add before torch starts its thread pool: the passive wait policy, unless the user has set
    any of :data:`WAIT_POLICY_KEYS`."""
    if any(k in environ for k in WAIT_POLICY_KEYS):
        return {}
    return dict(DEFAULT_WAIT_ENV)


def prepare_environment(environ=None) -> dict[str, str]:
    """Set :func:`wait_policy_env` in ``environ`` (default ``os.environ``) and return what was set. Does nothing
    once torch is imported in this process (libgomp has read its environment by then)."""
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules:
        return {}
    env = wait_policy_env(environ)
    if env:
        environ.update(env)
        environ[SET_BY_NSRUN] = ",".join(sorted(env))
    return env


def wait_policy(environ=None) -> dict[str, str]:
    """The wait-policy variables in effect and who set them: ``{"OMP_WAIT_POLICY": ..., "set_by": ...}``."""
    environ = os.environ if environ is None else environ
    chosen = {k: environ[k] for k in WAIT_POLICY_KEYS if k in environ}
    if not chosen:
        return {"set_by": "libgomp default (spin, then sleep)"}
    marked = set(environ.get(SET_BY_NSRUN, "").split(",")) >= set(chosen)
    by_nsrun = marked and all(DEFAULT_WAIT_ENV.get(k) == v for k, v in chosen.items())
    return {**chosen, "set_by": "nsrun" if by_nsrun else "user"}


def resolve_threads(threads, environ, cores: int, torch_default: int) -> tuple[int, str]:
    """``(count, source)`` for ``train.threads``: an integer as given; ``auto``: the user's ``OMP_NUM_THREADS``
    if set (torch already took it at import), else ``cores``; ``None``: torch's default."""
    if threads is None:
        return torch_default, "torch default"
    if threads == "auto":
        if environ.get("OMP_NUM_THREADS", "").strip():
            return torch_default, "OMP_NUM_THREADS"
        return cores, "auto: available cores"
    return int(threads), "train.threads"


def resumed_threads(threads, trained: int | None):
    """The ``train.threads`` a resumed run uses: the count it has trained at (``trained``, recorded in its
    checkpoint) while ``threads`` is ``auto``, since the thread count changes float rounding and so the metrics (a
    run started by a one-thread pool worker and resumed by hand keeps its count); an explicit setting (an
    integer, null) as given."""
    return trained if threads == "auto" and trained is not None else threads


def apply_thread_policy(threads, device, environ=None) -> dict:
    """Set torch's intra-op threads for ``train.threads`` (``int | "auto" | None``) and return what the run used:
    ``{"threads", "threads_source", "cores_available", "core_limits", "wait_policy", "device"}``."""
    import torch

    environ = os.environ if environ is None else environ
    limits = core_limits(environ)
    cores = available_cores(limits)
    count, source = resolve_threads(threads, environ, cores, torch.get_num_threads())
    if count != torch.get_num_threads():
        torch.set_num_threads(count)
    return {"threads": torch.get_num_threads(), "threads_source": source, "cores_available": cores,
            "core_limits": limits, "wait_policy": wait_policy(environ), "device": str(device)}


def deterministic_mode(enabled: bool, device) -> dict:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` where ``enabled``; on every device, since on CPU
    it too picks deterministic kernels (the backward of indexing ``x[idx]``, ``index_put_``/``put_`` with
    accumulation: torch's documentation of ``use_deterministic_algorithms``).

    Its import of ``torch._inductor`` (about 2 s) costs nothing extra in torch 2.13: ``torch.optim``'s optimisers
    import ``torch._dynamo``, and with it ``torch._inductor``, when constructed (``Optimizer.add_param_group``)."""
    if enabled:
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
    return {"deterministic": bool(enabled), "device": str(device)}
