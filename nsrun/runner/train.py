"""From a validated config to a finished run directory: lock it, check it, resume it, run the loop, finish it.

``train(cfg, run_dir)`` trains seed ``cfg.seed``; with ``train.parallel_seeds=K`` it trains seeds
``seed .. seed+K-1``, each into its own complete run directory ``RUN_DIR/seed_S`` (the run directory of the
equivalent single run ``seed=S``), either one after another (``train.parallel_backend=loop``, the default on CPU,
where batching tiny models does not pay) or as one vmapped stack (``vmap``, the default on CUDA).
"""

from __future__ import annotations

import hashlib
import logging
import os
from contextlib import ExitStack
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from nsrun.runner.config import build_logger, describe_reg, preflight, stop_rule, validate
from nsrun.runner.errors import TrainingError
from nsrun.runner.loop import Cadence, Interrupted, LoopState, restore, train_loop
from nsrun.runner.outcome import settle_onset
from nsrun.runner.rundir import RunDir
from nsrun.runner.stopping import StopTracker

log = logging.getLogger("nsrun")

__all__ = ["Interrupted", "run_id_for", "run_objective", "seed_config", "train"]

REQUEUE_LOCK_WAIT_S = 120.0  # a requeued SLURM job waits this long for its first instance to let go


def run_id_for(run_dir) -> str:
    """A deterministic id for a run directory (the wandb run id)."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def seed_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of the single run that seed ``seed`` of ``cfg`` equals."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        out.seed = seed
        out.train.parallel_seeds = 1
    return out


def parallel_backend(cfg) -> str:
    from nsrun.runner.replicas import resolve_device

    backend = cfg.train.parallel_backend
    if backend != "auto":
        return backend
    return "vmap" if resolve_device(cfg.train.device).type == "cuda" else "loop"


def lock_wait_s() -> float:
    """How long to wait for another writer: only a requeued SLURM job waits (for its own first instance)."""
    return REQUEUE_LOCK_WAIT_S if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0 else 0.0


def train(cfg: DictConfig, run_dir, on_start=None) -> dict:
    """Train ``cfg`` into ``run_dir`` (resuming if it holds a checkpoint); return the last metrics row (with
    parallel seeds: ``{seed: last row}``). ``on_start(root: RunDir)`` runs once the writer lock is held and the
    config matches the run's (the command writes Hydra's record there): a refused command changes nothing.
    Raises TrainingError, once every replica has ended, when one failed (its loss became inf or nan; DONE says so)."""
    validate(cfg)
    preflight(cfg)  # CUDA, data files, the hub: where the job runs (a SLURM node)
    root = RunDir(run_dir)
    K = cfg.train.parallel_seeds
    if K == 1:
        with root.lock(lock_wait_s()):
            root.check_config(cfg)
            ckpt = root.load_checkpoint()  # a checkpoint that does not load is refused before anything changes
            root.claim()
            root.remove_stale_temp_files()
            if on_start is not None:
                on_start(root)
            row = _train_locked([cfg], [root], [ckpt])[0]
        _raise_failures([root])
        return row
    seeds = list(range(cfg.seed, cfg.seed + K))
    cfgs, dirs = [seed_config(cfg, s) for s in seeds], [root.seed_dir(s) for s in seeds]
    backend = parallel_backend(cfg)
    with ExitStack() as held:
        for d in (root, *dirs):
            held.enter_context(d.lock(lock_wait_s()))
        for d, c in zip(dirs, cfgs, strict=True):
            d.check_config(c)
        ckpts = [d.load_checkpoint() for d in dirs]  # refused before anything changes
        for d in (root, *dirs):
            d.claim()
            d.remove_stale_temp_files()
        if on_start is not None:
            on_start(root)
        log.info("training seeds %d..%d in %s (backend %s)", seeds[0], seeds[-1], root.path, backend)
        rows = {}
        if backend == "loop":
            for c, d, ckpt in zip(cfgs, dirs, ckpts, strict=True):
                rows[int(c.seed)] = _train_locked([c], [d], [ckpt])[0]
        else:
            todo = [(c, d) for c, d in zip(cfgs, dirs, strict=True) if not _ended(d)]
            for c, d in zip(cfgs, dirs, strict=True):
                if _ended(d):
                    rows[int(c.seed)] = _train_locked([c], [d])[0]  # says it is complete; nothing runs
            if todo:
                _catch_up([c for c, _ in todo], [d for _, d in todo])
                for (c, _), row in zip(todo, _train_locked(*map(list, zip(*todo, strict=True))), strict=True):
                    rows[int(c.seed)] = row
    _raise_failures(dirs)
    return {s: rows[s] for s in seeds}


def _raise_failures(dirs: list[RunDir]) -> None:
    """TrainingError naming each run directory whose training failed (DONE records the outcome)."""
    failed = [(d, f) for d in dirs if (f := d.failure()) is not None]
    if failed:
        runs = "; ".join(f"{d.path}: training {f.text}" for d, f in failed)
        raise TrainingError(f"{runs} (recorded in DONE; a rerun does nothing: try other settings in a new "
                            "hydra.run.dir)")


def _ended(d: RunDir) -> bool:
    """Whether the run ended early, by its stop rule or by failing (then it is complete, whatever
    ``train.steps`` says now)."""
    return d.outcome() is not None


def _finished(d: RunDir, ckpt: dict | None, steps: int) -> bool:
    if d.failure() is not None:
        return True  # a failed run may have no checkpoint: it failed before its first
    return ckpt is not None and d.done_info() is not None and (ckpt["step"] >= steps or _ended(d))


def _train_locked(cfgs: list[DictConfig], dirs: list[RunDir], ckpts: list | None = None) -> list[dict]:
    """Train replicas ``cfgs`` (one config, or K seeds of one config) into ``dirs``, whose locks are held, from
    their checkpoints ``ckpts`` (None: loaded here)."""
    from nsrun.runner.replicas import build_replicas, resolve_device
    from nsrun.runner.threads import apply_thread_policy, deterministic_mode, resumed_threads

    cfg = cfgs[0]
    ckpts = ckpts if ckpts is not None else [d.load_checkpoint() for d in dirs]
    if all(_finished(d, c, cfg.train.steps) for d, c in zip(dirs, ckpts, strict=True)):
        rows = []
        for d, c in zip(dirs, ckpts, strict=True):
            if d.failure() is not None:  # TrainingError says so
                rows.append((d.read_metrics() or [{}])[-1])
                continue
            if d.log_damage() is not None:
                log.info("%s: %s", d.path, d.log_damage())
                _restore_logs(d, c, len(dirs))
            reason = d.done_info().reason
            log.info("run in %s is already complete (step %d%s); nothing to do", d.path, c["step"],
                     f", {reason}" if reason else "")
            rows.append(c.get("last_row", {}))
        return rows
    for d, c in zip(dirs, cfgs, strict=True):
        d.write_config(c)
        log.info("run directory: %s", d.path)
    log.info("regulariser: %s", describe_reg(cfg))
    device = resolve_device(cfg.train.device)
    trained = dirs[0].trained_threads(ckpts[0]) if device.type == "cpu" and ckpts[0] is not None else None
    threads = resumed_threads(cfg.train.threads, trained)
    runtime = {**apply_thread_policy(threads, device), **deterministic_mode(cfg.train.deterministic, device)}
    if threads != cfg.train.threads:
        runtime["threads_source"] = "kept: the run's own count (train.threads=auto on resume)"
        log.info("resuming at %d thread%s, as the run has trained so far (train.threads=N to override)",
                 runtime["threads"], "s" if runtime["threads"] != 1 else "")
    else:
        log.info("threads: %d (%s), OpenMP wait policy %s", runtime["threads"], runtime["threads_source"],
                 runtime["wait_policy"].get("OMP_WAIT_POLICY", "default"))
    if trained is not None and runtime["threads"] != trained:
        log.warning("the run has trained at %d thread%s and resumes at %d: its metrics from here on match neither "
                    "an uninterrupted run at %d nor one at %d", trained, "s" if trained != 1 else "",
                    runtime["threads"], trained, runtime["threads"])
    for d in dirs:
        d.record_start(runtime)
    replicas = build_replicas(cfgs, device, "vmap" if len(cfgs) > 1 else "single")
    state = LoopState(run_ids=[run_id_for(d.path) for d in dirs], last_rows=[{} for _ in dirs])
    restore(replicas, state, ckpts)
    for d, c in zip(dirs, ckpts, strict=True):
        _prepare_logs(d, c, len(dirs))
    rule = stop_rule(cfg)
    stoppers = [StopTracker(rule) if rule is not None else None for _ in dirs]
    for tracker, d in zip(stoppers, dirs, strict=True):
        if tracker is not None:
            tracker.replay(d.read_metrics())
    trackers = [build_logger(c, d.path, rid) for c, d, rid in zip(cfgs, dirs, state.run_ids, strict=True)]
    cadence = Cadence(cfg.train.steps, cfg.train.eval_every, cfg.train.checkpoint_every, cfg.train.progress)
    exit_code = 1
    try:
        rows = train_loop(replicas, dirs, trackers, cadence, state, stoppers)
        for d, reason in zip(dirs, state.stopped, strict=True):
            if reason is None:
                d.mark_done(cfg.train.steps)
        for tracker, row in zip(trackers, rows, strict=True):
            tracker.summary(row)
        exit_code = 0
    finally:
        replicas.close()
        for tracker, d in zip(trackers, dirs, strict=True):
            tracker.finish(exit_code if d.failure() is None else 1)
    for d in dirs:
        if d.failure() is None:
            log.info("finished: %s", d.path)
    return rows


def _prepare_logs(d: RunDir, ckpt: dict | None, n_replicas: int) -> None:
    """Make the logs match the checkpoint the run resumes from (:func:`_restore_logs`); logs without a checkpoint
    are set aside."""
    if ckpt is None:
        d.set_logs_aside()
        return
    dropped = _restore_logs(d, ckpt, n_replicas)
    log.info("resuming %s from step %d%s", d.path, ckpt["step"],
             f" (dropped {dropped} rows logged after that checkpoint)" if dropped > 0 else "")


def _restore_logs(d: RunDir, ckpt: dict, n_replicas: int) -> int:
    """Rows after the checkpoint's step are dropped (a resumed run recomputes them), and so are torn lines; the
    row at its own step lost to a torn write is restored from the checkpoint. Returns how many lines were
    dropped."""
    step = ckpt["step"]
    dropped = d.metrics.truncate_after(step) + d.timing.truncate_after(step)
    last = ckpt.get("last_row") or {}
    if last.get("step") == step and d.metrics.last_step() != step:
        d.metrics.append(last)
        log.info("%s: restored the metrics row of step %d from the checkpoint", d.path, step)
    if last.get("step") == step and d.timing.last_step() != step:
        clock = ckpt["clock"]
        row = {"step": step, "train_seconds": clock["train"], "eval_seconds": clock["eval"]}
        d.timing.append(row if n_replicas == 1 else {**row, "parallel_seeds": n_replicas})
    return dropped


def _catch_up(cfgs: list[DictConfig], dirs: list[RunDir]) -> None:
    """Bring seeds whose checkpoint lags (a run stopped while writing its checkpoints) to the step of the most
    advanced one, each as a single run, so that the stack resumes at one step."""
    ckpts = [d.load_checkpoint() for d in dirs]
    steps = [c["step"] if c is not None else 0 for c in ckpts]
    target = max(steps)
    if target == min(steps):
        return
    for c, d, step in zip(cfgs, dirs, steps, strict=True):
        if step < target:
            log.info("seed %d is at step %d, the others at %d: catching it up", c.seed, step, target)
            short = OmegaConf.create(OmegaConf.to_container(c, resolve=True))
            with open_dict(short):
                short.train.steps = target
            _train_locked([short], [d])
            if target < cfgs[0].train.steps:
                d.unmark_done()


def run_objective(cfg: DictConfig, run_dir) -> float | None:
    """What a hyperparameter search minimises (``conf/hparams_search/``): with a stop rule, the run's onset under
    that rule's metric, direction and level (the step from which the metric stayed past the level for the rest
    of the run, settled by how the run ended: :func:`nsrun.runner.outcome.settle_onset`; for a run the rule
    stopped, the step where the stopping stretch began) when it is known and reached, else ``train.steps +
    stop.unreached_penalty``; with ``train.parallel_seeds=K`` the mean of the K seeds' values (a search on
    several seeds a trial); None without a stop rule."""
    rule = stop_rule(cfg)
    if rule is None:
        return None
    K = cfg.train.parallel_seeds
    if K > 1:
        root = RunDir(run_dir)
        return sum(_seed_objective(cfg, rule, root.seed_dir(cfg.seed + i)) for i in range(K)) / K
    return _seed_objective(cfg, rule, RunDir(run_dir))


def _seed_objective(cfg: DictConfig, rule, d: RunDir) -> float:
    from nsrun.science.onsets import Onsets, sustained_onset

    info, rows = d.done_info(), d.read_metrics()
    if info is not None:
        onset = sustained_onset([r["step"] for r in rows], [r.get(rule.metric) for r in rows], rule.level,
                                rule.direction == "above")
        settled = settle_onset(Onsets(onset), info.outcome, rule)
        if settled.onset_step is not None:
            return float(settled.onset_step)
    return float(cfg.train.steps + cfg.stop.unreached_penalty)
