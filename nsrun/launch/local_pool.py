"""Local sweeps on every CPU core or every GPU: a pool of worker processes, each pinned to one slot.

``hydra/launcher=local_cores`` runs one single-threaded job per CPU core; ``hydra/launcher=local_gpus``
runs one job per GPU at a time (``jobs_per_gpu`` to share), each worker seeing only its own GPU through
``CUDA_VISIBLE_DEVICES``. Jobs wait in a queue for a free worker. Workers are started once (spawn) and
reused, so torch is imported once per worker, not once per job. Each job runs exactly as under Hydra's
basic launcher (same run directory ``multirun/DATE/TIME/N``, same ``.hydra/``); the sweep directory gets
``local_pool.jsonl``: one row per job with its worker, GPU, threads and wall-clock interval.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from nsrun.runner.errors import UsageError

log = logging.getLogger(__name__)

POOL_LOG = "local_pool.jsonl"
_worker: dict = {}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def visible_gpus(gpus: Sequence[int] | None = None, environ: dict | None = None) -> list[str]:
    """The GPU ids workers are pinned to: ``gpus`` if given, else those listed in ``CUDA_VISIBLE_DEVICES``,
    else ``0 .. torch.cuda.device_count() - 1``."""
    if gpus is not None:
        return [str(g) for g in gpus]
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and not g.strip().startswith("-")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "NSRUN_WORKER_THREADS": str(threads)}


def worker_slots(device: str = "cpu", n_workers: int | None = None, threads_per_job: int | None = None,
                 gpus: Sequence[int] | None = None, jobs_per_gpu: int = 1, cores: int | None = None,
                 environ: dict | None = None) -> list[dict[str, str]]:
    """The environment of each worker, one dict per worker. ``cpu``: ``n_workers`` (default: one per core)
    workers with no GPU and ``threads_per_job`` threads (default cores // workers). ``cuda``: ``jobs_per_gpu``
    workers per GPU, assigned round-robin (GPU 0, 1, ..., 0, 1, ...), optionally capped at ``n_workers``."""
    cores = cores or available_cores()
    for key, value, low in (("n_workers", n_workers, 1), ("threads_per_job", threads_per_job, 1),
                            ("jobs_per_gpu", jobs_per_gpu, 1)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise UsageError(f"hydra.launcher.{key}: must be an integer >= {low} or null, got {value!r}")
    if device == "cpu":
        n = n_workers or cores
        threads = threads_per_job or max(1, cores // n)
        return [{"CUDA_VISIBLE_DEVICES": "", **thread_env(threads)} for _ in range(n)]
    if device == "cuda":
        ids = visible_gpus(gpus, environ)
        if not ids:
            raise UsageError("hydra/launcher=local_gpus: no CUDA device is visible; use hydra/launcher=local_cores")
        slots = [gpu for _ in range(jobs_per_gpu) for gpu in ids]
        slots = slots[:n_workers] if n_workers else slots
        threads = threads_per_job or max(1, cores // len(slots))
        return [{"CUDA_VISIBLE_DEVICES": gpu, **thread_env(threads)} for gpu in slots]
    raise UsageError(f"hydra.launcher.device: must be cpu or cuda, got {device!r}")


def _init_worker(slot_queue) -> None:
    """Runs once in each new worker, before any job: take a slot and pin this process to it."""
    slot, env = slot_queue.get()
    os.environ.update(env)
    import torch

    torch.set_num_threads(int(env["NSRUN_WORKER_THREADS"]))
    _worker.update(slot=slot, env=env)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _run_job(payload: bytes) -> bytes:
    """Run one Hydra job in this worker (as hydra-joblib-launcher's ``execute_job`` does)."""
    import cloudpickle
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals
    from omegaconf import open_dict

    idx, overrides, hydra_context, config, task_function, singleton_state = cloudpickle.loads(payload)
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    start = time.time()
    ret = run_job(hydra_context=hydra_context, config=sweep_config, task_function=task_function,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    info = {"job": idx, "worker": _worker.get("slot"), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads(),
            "start": start, "end": time.time(), "status": ret.status.name,
            "dir": str(sweep_config.hydra.runtime.output_dir)}
    if ret.status == JobStatus.FAILED:
        ret.return_value = _picklable(ret._return_value)
        ret.status = JobStatus.FAILED
    try:
        return cloudpickle.dumps((ret, info))
    except Exception as e:  # a return value that does not pickle: keep the job's status, drop the value
        ret.return_value = None if ret.status != JobStatus.FAILED else RuntimeError(str(e))
        return cloudpickle.dumps((ret, info))


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Run every job of a sweep on the launcher's worker pool; return their JobReturns in order."""
    import multiprocessing

    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import configure_log, filter_overrides, setup_globals

    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    slots = worker_slots(**launcher.options)
    n_workers = min(len(slots), len(job_overrides))
    where = ", ".join(sorted({s["CUDA_VISIBLE_DEVICES"] or "cpu" for s in slots[:n_workers]}))
    log.info("local pool: %d jobs on %d workers (%s; %s torch threads each), sweep dir %s", len(job_overrides),
             n_workers, where if launcher.options["device"] == "cuda" else "cpu",
             slots[0]["NSRUN_WORKER_THREADS"], sweep_dir)
    for i, overrides in enumerate(job_overrides):
        log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(overrides)))

    ctx = multiprocessing.get_context("spawn")
    slot_queue = ctx.Queue()
    for slot, env in enumerate(slots[:n_workers]):
        slot_queue.put((slot, env))
    state = Singleton.get_state()
    results: list = [None] * len(job_overrides)
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(slot_queue,))
    try:
        futures = {
            pool.submit(_run_job, cloudpickle.dumps((initial_job_idx + i, list(overrides), launcher.hydra_context,
                                                     config, launcher.task_function, state))): i
            for i, overrides in enumerate(job_overrides)
        }
        for future in as_completed(futures):
            ret, info = cloudpickle.loads(future.result())
            results[futures[future]] = ret
            with open(sweep_dir / POOL_LOG, "a") as f:
                f.write(json.dumps(info) + "\n")
            log.info("\t#%d %s on worker %d (CUDA_VISIBLE_DEVICES=%r, %d torch threads) in %.1f s", info["job"],
                     info["status"].lower(), info["worker"], info["cuda_visible_devices"], info["threads"],
                     info["end"] - info["start"])
    except BaseException:  # Ctrl-C (the running jobs checkpoint and stop): start no queued job
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results
