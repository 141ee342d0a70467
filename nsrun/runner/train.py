"""The training loop: plain PyTorch, one function from a validated config to a finished run directory.

Step ``s`` means "after ``s`` optimiser updates". Metrics are evaluated at step 0, every
``train.eval_every`` steps and at the last step; a checkpoint is written every
``train.checkpoint_every`` steps, at the end, and when the process is interrupted (SIGINT, SIGTERM,
SIGUSR2). Re-running in the same run directory resumes from the last checkpoint and reproduces exactly
the metrics of an uninterrupted run on CPU: data order is a pure function of (seed, epoch), and every
random generator is checkpointed.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from nsrun.runner.checkpoint import CHECKPOINT_DIR, LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nsrun.runner.config import build_logger, build_model, build_objective, build_task, preflight, validate
from nsrun.runner.errors import UsageError
from nsrun.runner.threads import apply_thread_policy, deterministic_mode
from nsrun.runner.tracking import METRICS_FILE, TIMING_FILE, JsonlWriter

log = logging.getLogger("nsrun")

RESOLVED_CONFIG = "resolved_config.yaml"
DONE_MARKER = "DONE"
# keys that may change between a run and its resumption without changing its metrics
RESUMABLE_KEYS = ("train.steps", "train.device", "train.threads", "train.progress", "eval.batch_size", "logger",
                  "train.parallel_backend", "train.compile", "stop")

# keys added after runs were made, with the value that reproduces what runs made before them did: a saved
# config without such a key counts as having that value, so old run dirs still skip and resume
ADDED_KEYS = {"eval.n_examples": None, "stability.sensitivity_positions": None, "task.eval_examples": None,
              "task.stability_examples": None, "task.sensitivity_positions": None}


class Interrupted(Exception):
    """Raised inside the loop when a signal asks the run to stop (a checkpoint has been written)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_id_for(run_dir: Path) -> str:
    """A deterministic id for a run directory (used as the wandb run id)."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def _parent(d: dict, key: str) -> tuple[dict | None, str]:
    *parents, leaf = key.split(".")
    for p in parents:
        d = d.get(p) if isinstance(d, dict) else None
    return (d if isinstance(d, dict) else None), leaf


def _comparable(cfg) -> dict:
    """The resolved config without RESUMABLE_KEYS and with ADDED_KEYS filled in where missing."""
    d = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    for key in RESUMABLE_KEYS:
        node, leaf = _parent(d, key)
        if node is not None:
            node.pop(leaf, None)
    for key, value in ADDED_KEYS.items():
        node, leaf = _parent(d, key)
        if node is not None:
            node.setdefault(leaf, value)
    if isinstance(d.get("reg"), dict) and d["reg"].get("name") != "stability":  # rho/gamma of old baselines
        d["reg"].pop("rho", None), d["reg"].pop("gamma", None)
    return d


def _first_difference(a, b, prefix="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')} ({a!r} there, {b!r} now)"


def check_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse to reuse a run directory that holds a run of a different config (nothing is touched)."""
    saved = run_dir / RESOLVED_CONFIG
    if not saved.exists():
        return
    old = _comparable(OmegaConf.load(saved))
    new = _comparable(cfg)
    if old != new:
        raise UsageError(
            f"{run_dir} holds a run with a different config: {_first_difference(old, new)}; "
            "choose a new hydra.run.dir or rerun with the same overrides"
        )


def batch_indices(n: int, batch_size: int | None, seed: int, step: int) -> torch.Tensor | None:
    """Indices of the training batch at ``step``: None for full batch; otherwise a slice of a
    permutation that depends only on (seed, epoch), so resuming needs no sampler state."""
    if batch_size is None or batch_size >= n:
        return None
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[i * batch_size : (i + 1) * batch_size]


@torch.no_grad()
def evaluate(model, task, x, y, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    per_item = y[0].numel()
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        logits = model(xb)
        n = len(xb) * per_item
        total_loss += task.loss(logits, yb).item() * n
        correct += task.correct(logits, yb).item()
        count += n
    model.train()
    return total_loss / count, correct / count


def eval_subset(split, n_examples: int | None, split_index: int):
    """``(x, y)`` of a fixed random subset of ``n_examples`` examples of a split, the same for every run and
    seed (so that runs are compared on one set); the whole split when ``n_examples`` is null or too large."""
    if n_examples is None or n_examples >= len(split.x):
        return split.x, split.y
    g = torch.Generator().manual_seed(2_147_483_647 - split_index)
    idx = torch.randperm(len(split.x), generator=g)[:n_examples].sort().values.to(split.x.device)
    return split.x[idx], split.y[idx]


def eval_metrics(model, task, cfg, step: int) -> dict:
    """Everything logged at an eval step (loss and accuracy on ``eval.n_examples`` examples per split)."""
    n_examples = cfg.eval.get("n_examples")
    train_loss, train_acc = evaluate(model, task, *eval_subset(task.train, n_examples, 0), cfg.eval.batch_size)
    val_loss, val_acc = evaluate(model, task, *eval_subset(task.val_split(step), n_examples, 1),
                                 cfg.eval.batch_size)
    row = {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}
    row.update(task.extra_metrics(val_loss))
    if cfg.get("stability") is not None and cfg.stability.enabled:
        from nsrun.runner.config import monitor_settings
        from nsrun.science.stability.monitor import stability_metrics

        row.update(stability_metrics(model, task, monitor_settings(cfg), cfg.seed, step, cfg.eval.batch_size))
    return row


def make_optimizer(params, cfg, device: torch.device) -> torch.optim.AdamW:
    """AdamW; the fused kernel on CPU and CUDA (one kernel for all parameters: same update up to float
    rounding, faster for small models; see README, Performance)."""
    return torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay, fused=True if device.type in ("cpu", "cuda") else None,
    )


def lr_lambda(warmup_steps: int):
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM/SIGUSR2 into a flag the loop checks after each step (so a checkpoint is
    never taken mid-update); a second SIGINT stops at once. Handlers are restored afterwards.

    ``flag["hand_over"]()``, called once the stop checkpoint is written, restores the previous handlers
    and passes the signal on to the previous handler when that was a Python one: inside a submitit job
    (sweeps on SLURM) that is submitit's SIGUSR2 handler, which requeues the job and exits the process;
    the requeued job resumes from the checkpoint just written."""
    flag = {"signal": None}

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR2", None)):
        if sig is None:
            continue
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    def restore():
        for sig, h in old.items():
            signal.signal(sig, h)

    def hand_over():
        signum = flag["signal"]
        restore()
        previous = old.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, None)

    flag["hand_over"] = hand_over
    try:
        yield flag
    finally:
        restore()


def _progress(cfg, start: int):
    mode = cfg.train.progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "log"
    if mode == "bar":
        from tqdm import tqdm

        return mode, tqdm(total=cfg.train.steps, initial=start, dynamic_ncols=True, desc="train")
    return mode, None


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train ``cfg`` into ``run_dir`` (resuming if it holds a checkpoint); return the last metrics row."""
    validate(cfg)
    preflight(cfg)  # CUDA, data files, the hub: where the job runs (a SLURM node)
    if cfg.train.get("parallel_seeds", 1) > 1:
        from nsrun.runner.parallel_seeds import train_seeds

        return train_seeds(cfg, run_dir)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_dir(run_dir, cfg)
    ckpt_path = run_dir / CHECKPOINT_DIR / LAST
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if ckpt is not None and ckpt["step"] >= cfg.train.steps and (run_dir / DONE_MARKER).exists():
        log.info("run in %s is already complete (step %d); nothing to do", run_dir, ckpt["step"])
        return ckpt.get("last_row", {})
    if not (run_dir / RESOLVED_CONFIG).exists():
        (run_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))

    device = resolve_device(cfg.train.device)
    log.info("threads: %s", apply_thread_policy(cfg.train.threads, device))
    deterministic_mode(cfg.train.deterministic, device)

    task = build_task(cfg).to(device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, task).to(device)
    optimizer = make_optimizer(model.parameters(), cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim.warmup_steps))
    objective = build_objective(cfg, task)
    # the objective trains through the compiled module; eval and checkpoints use the plain one (same weights)
    train_model = torch.compile(model) if cfg.train.get("compile") else model
    after_backward = getattr(objective, "after_backward", None)

    metrics = JsonlWriter(run_dir / METRICS_FILE)
    timing = JsonlWriter(run_dir / TIMING_FILE)
    start, clock = 0, {"train": 0.0, "eval": 0.0}
    run_id = run_id_for(run_dir)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        objective.load_state_dict(ckpt["objective"])
        set_rng_state(ckpt["rng"], {})
        start, clock, run_id = ckpt["step"], dict(ckpt["clock"]), ckpt.get("run_id", run_id)
        dropped = metrics.truncate_after(start) + timing.truncate_after(start)
        log.info("resuming %s from step %d%s", run_dir, start,
                 f" (dropped {dropped} rows logged after that checkpoint)" if dropped else "")
    else:
        for path in (metrics.path, timing.path):
            if path.exists():  # logs without a checkpoint: a run killed before its first checkpoint
                path.replace(path.with_suffix(path.suffix + f".orphan-{int(time.time())}"))

    tracker = build_logger(cfg, run_dir, run_id)
    last_row: dict = {}

    def do_eval(step: int) -> None:
        nonlocal last_row
        t0 = time.perf_counter()
        row = {"step": step, **eval_metrics(model, task, cfg, step), "lr": scheduler.get_last_lr()[0]}
        if hasattr(objective, "log_stats"):
            row.update(objective.log_stats())
        clock["eval"] += time.perf_counter() - t0
        metrics.append(row)
        timing.append({"step": step, "train_seconds": clock["train"], "eval_seconds": clock["eval"]})
        tracker.log(row, step)
        last_row = row
        if mode == "log":
            log.info("step %d/%d  train_loss %.4f  val_loss %.4f  train_acc %.3f  val_acc %.3f",
                     step, cfg.train.steps, row["train_loss"], row["val_loss"], row["train_acc"], row["val_acc"])
        elif bar is not None:
            bar.set_postfix(val_loss=f"{row['val_loss']:.3f}", val_acc=f"{row['val_acc']:.3f}")

    def do_checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "objective": objective.state_dict(),
            "rng": rng_state({}),
            "clock": clock,
            "run_id": run_id,
            "last_row": last_row,
        })

    mode, bar = _progress(cfg, start)
    exit_code = 1
    try:
        with stop_on_signals() as stop:
            if start == 0:
                do_eval(0)
            step = start
            n_train = len(task.train.x)
            model.train()
            while step < cfg.train.steps:
                t0 = time.perf_counter()
                idx = batch_indices(n_train, cfg.train.batch_size, cfg.seed, step)
                x, y = (task.train.x, task.train.y) if idx is None else (task.train.x[idx.to(device)],
                                                                          task.train.y[idx.to(device)])
                loss, _ = objective(train_model, x, y, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if after_backward is not None:
                    after_backward(model)
                if cfg.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                clock["train"] += time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                    do_eval(step)
                if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
                    do_checkpoint(step)
                if stop["signal"] is not None and step < cfg.train.steps:
                    do_checkpoint(step)
                    log.info("signal %d: checkpoint written at step %d", stop["signal"], step)
                    stop["hand_over"]()  # e.g. submitit's SIGUSR2 handler: requeue the job (it exits)
                    raise Interrupted(f"stopped by signal {stop['signal']} at step {step}; checkpoint written")
        (run_dir / DONE_MARKER).write_text(f"{cfg.train.steps}\n")
        tracker.summary(last_row)
        exit_code = 0
    finally:
        if bar is not None:
            bar.close()
        tracker.finish(exit_code)
    return last_row
