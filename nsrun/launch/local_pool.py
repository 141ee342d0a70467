"""Local sweeps on every CPU core or every GPU: a pool of worker processes, each pinned to one slot.

``hydra/launcher=local_cores`` runs one single-threaded job per CPU core; ``hydra/launcher=local_gpus``
runs one job per GPU at a time (``jobs_per_gpu`` to share), each worker seeing only its own GPU through
``CUDA_VISIBLE_DEVICES``. Jobs wait in a queue for a free worker. Workers are started once (spawn) and
reused, so torch is imported once per worker, not once per job. Each job runs exactly as under Hydra's
basic launcher (same run directory ``multirun/DATE/TIME/N``, same ``.hydra/``); the sweep directory gets
``local_pool.jsonl``: one row per job with its worker, GPU, threads and wall-clock interval.

A stop signal (SIGINT, SIGTERM, SIGUSR2) to the parent, or Ctrl-C to the whole process group, stops the sweep:
queued jobs do not start, each worker's running job writes its checkpoint and stops, the workers exit, and the
parent raises ``SweepStopped`` (the command reports every job and exits with 128 + the signal). A worker whose
parent is gone (killed by SIGKILL) stops its job the same way and exits.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

from nsrun.launch import sweep_stop
from nsrun.runner.errors import UsageError
from nsrun.runner.signals import STOP_SIGNALS, catch_stop_signals, note, received
from nsrun.runner.threads import available_cores

log = logging.getLogger(__name__)

POOL_LOG = "local_pool.jsonl"
POLL_S = 0.2  # how often the parent looks for a stop signal, and a worker for its parent
_worker: dict = {}
_job_running = threading.Lock()  # held by a worker while it runs a job


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
    """The environment of each worker, one dict per worker. ``cpu``: ``n_workers`` (default: one per core this
    process may use, the affinity, cgroup quota and SLURM limits: :func:`nsrun.runner.threads.available_cores`)
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


def _watch_parent(parent_pid: int, stop) -> None:
    """Stop the running job as a SIGTERM does (it writes its checkpoint) once the parent sets ``stop`` (the sweep
    was stopped) or is gone (killed by SIGKILL, it could not stop its workers); when the parent is gone, end
    this worker as soon as no job runs."""
    told = False
    while os.getppid() == parent_pid:
        if not told and stop.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            told = True
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    with _job_running:
        os._exit(128 + signal.SIGTERM)


def _init_worker(slot_queue, parent_pid: int, stop) -> None:
    """Runs once in each new worker, before any job: record stop signals (the running job stops at its next
    step, no further job starts), watch the parent, take a slot and pin this process to it."""
    catch_stop_signals()
    threading.Thread(target=_watch_parent, args=(parent_pid, stop), daemon=True, name="nsrun-watch-parent").start()
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


def _status(outcome: sweep_stop.JobOutcome | None) -> str:
    """A job's status in ``local_pool.jsonl`` (Hydra's COMPLETED and FAILED, or STOPPED, NOT_STARTED)."""
    if outcome is None:
        return "NOT_STARTED"
    return "COMPLETED" if outcome.state == sweep_stop.FINISHED else outcome.state.upper().replace(" ", "_")


def _run_job(payload: bytes) -> bytes:
    """Run one Hydra job in this worker (as hydra-joblib-launcher's ``execute_job`` does)."""
    import cloudpickle
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals
    from omegaconf import open_dict

    idx, overrides, hydra_context, config, task_function, singleton_state = cloudpickle.loads(payload)
    info = {"job": idx, "worker": _worker.get("slot"), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads(),
            "start": time.time()}
    if received() is not None:  # this worker was told to stop: the job does not start
        return cloudpickle.dumps((None, {**info, "end": time.time(), "status": _status(None), "signal": received()}))
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    try:
        with _job_running:
            ret = run_job(hydra_context=hydra_context, config=sweep_config, task_function=task_function,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except sweep_stop.SweepStopped as e:  # a stop signal: the job wrote its checkpoint, or did not start
        outcome = e.outcome
        info.update(end=time.time(), status=_status(outcome), signal=e.signum,
                    dir=str(sweep_config.hydra.runtime.output_dir))
        return cloudpickle.dumps((None, info if outcome is None or outcome.step is None else
                                  {**info, "step": outcome.step}))
    info.update(end=time.time(), status=ret.status.name, dir=str(sweep_config.hydra.runtime.output_dir))
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
    slot_queue, stop = ctx.Queue(), ctx.Event()
    for slot, env in enumerate(slots[:n_workers]):
        slot_queue.put((slot, env))
    state = Singleton.get_state()
    payloads = [cloudpickle.dumps((initial_job_idx + i, list(overrides), launcher.hydra_context, config,
                                   launcher.task_function, state)) for i, overrides in enumerate(job_overrides)]
    catch_stop_signals()
    sweep_stop.RECORD.rerun = sweep_stop.rerun_hint("sweep", str(config.hydra.sweep.dir), config.hydra.overrides.hydra)
    results: list = [None] * len(job_overrides)
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(slot_queue, os.getpid(), stop))
    futures: dict = {}
    try:
        with _stop_signals_ignored():  # the workers start (spawn) ignoring them, until their initializer runs
            futures = {pool.submit(_run_job, payload): i for i, payload in enumerate(payloads)}
        pending = set(futures)
        while pending and received() is None:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                i = futures[future]
                results[i] = _job_done(future, initial_job_idx + i, job_overrides[i], sweep_dir)
    except BaseException:
        _stop_workers(pool, stop, futures)
        raise
    if received() is not None:
        _stop_workers(pool, stop, futures)
        for future in pending:
            i = futures[future]
            _job_done(future, initial_job_idx + i, job_overrides[i], sweep_dir)
        raise sweep_stop.SweepStopped(received())
    pool.shutdown(wait=True)
    return results


@contextmanager
def _stop_signals_ignored():
    """Ignore stop signals in this block: a process spawned here starts with them ignored (exec keeps SIG_IGN)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_workers(pool, stop, futures) -> None:
    """Start no queued job, ask every worker to stop its running job (it writes its checkpoint), wait for them.
    ``stop`` reaches a worker still starting; a SIGTERM reaches the others at once (its initializer has made it
    a request to stop, and until then it is ignored)."""
    import multiprocessing

    stop.set()
    for future in futures:
        future.cancel()
    for worker in multiprocessing.active_children():  # this process's children: the pool's workers
        try:
            os.kill(worker.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    pool.shutdown(wait=True, cancel_futures=True)


def _job_done(future, num: int, overrides: Sequence[str], sweep_dir: Path):
    """Log a job that ended (``local_pool.jsonl`` and one line), record its outcome; return its JobReturn."""
    import cloudpickle

    if future.cancelled():
        sweep_stop.record(sweep_stop.JobOutcome(num, list(overrides), sweep_stop.NOT_STARTED))
        return None
    try:
        ret, info = cloudpickle.loads(future.result())
    except BaseException:
        if received() is None:
            raise
        # its worker stopped at once (a second Ctrl-C) or died: the job resumes from its last checkpoint
        sweep_stop.record(sweep_stop.JobOutcome(num, list(overrides), sweep_stop.RUNNING))
        return None
    with open(sweep_dir / POOL_LOG, "a") as f:
        f.write(json.dumps(info) + "\n")
    if info["status"] != "NOT_STARTED":
        log.info("\t#%d %s on worker %d (CUDA_VISIBLE_DEVICES=%r, %d torch threads) in %.1f s", info["job"],
                 info["status"].lower().replace("_", " "), info["worker"], info["cuda_visible_devices"],
                 info["threads"], info["end"] - info["start"])
    state = {"COMPLETED": sweep_stop.FINISHED, "FAILED": sweep_stop.FAILED, "STOPPED": sweep_stop.STOPPED,
             "NOT_STARTED": sweep_stop.NOT_STARTED}.get(info["status"], sweep_stop.FAILED)
    error = f"{type(ret._return_value).__name__}: {ret._return_value}" if state == sweep_stop.FAILED else ""
    sweep_stop.record(sweep_stop.JobOutcome(num, list(overrides), state, info.get("step"), error.splitlines()[0]
                                            if error else ""))
    if "signal" in info:  # its worker was stopped (a signal to that process alone): so is the sweep
        note(info["signal"])
    return ret
