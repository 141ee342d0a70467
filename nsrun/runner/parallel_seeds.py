"""K seeds of one config in one process: ``train.parallel_seeds=K`` trains seeds ``seed .. seed+K-1``.

Each seed gets its own run directory ``RUN_DIR/seed_S``, a complete run directory of the equivalent
single run (``seed=S train.parallel_seeds=1``: its resolved config, metrics.jsonl, timing.jsonl,
checkpoints, tracker run), so a seed can be inspected, compared or resumed like any other run.
``train.parallel_backend`` picks how:

* ``loop``: the K runs one after another (exactly K separate runs). The default on CPU, where batching
  tiny models does not pay (see README, Performance).
* ``vmap``: one forward/backward for all K seeds (``torch.func.stack_module_state`` + ``vmap``). Every
  seed keeps its own objective (its own noise generator and regulariser state), its own data order
  (``batch_indices`` with its seed) and its own AdamW state (AdamW is elementwise, so one optimiser over the
  stacked ``[K, ...]`` parameters is K independent ones; gradient clipping is per seed). The default on
  CUDA. Metrics equal those of K separate runs up to float rounding (batched matmuls sum in another order).

The objectives are unchanged: each runs in its own thread and gets a :class:`SeedModel`; its model calls
meet in a :class:`Rendezvous`, which runs them as one vmapped forward pass of the stacked model. Eval
copies each seed's weights into a plain model and calls the same ``eval_metrics`` as the plain loop.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("nsrun")

BACKENDS = ("auto", "vmap", "loop")


def seed_dir(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / f"seed_{seed}"


def seed_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of the single run that seed ``seed`` of ``cfg`` equals."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        out.seed = seed
        out.train.parallel_seeds = 1
    return out


def resolve_backend(cfg, device: torch.device) -> str:
    backend = cfg.train.parallel_backend
    return ("vmap" if device.type == "cuda" else "loop") if backend == "auto" else backend


def train_seeds(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train seeds ``cfg.seed .. cfg.seed + K - 1`` into ``run_dir/seed_S``; return ``{seed: last row}``."""
    from nsrun.runner.train import resolve_device, train

    run_dir = Path(run_dir)
    seeds = list(range(cfg.seed, cfg.seed + cfg.train.parallel_seeds))
    backend = resolve_backend(cfg, resolve_device(cfg.train.device))
    log.info("training seeds %d..%d in %s (backend %s)", seeds[0], seeds[-1], run_dir, backend)
    if backend == "loop":
        return {s: train(seed_config(cfg, s), seed_dir(run_dir, s)) for s in seeds}
    return train_vmapped(cfg, run_dir, seeds)


class Rendezvous:
    """Collects the model calls of K objective threads and runs each round as one batched call.

    A round runs when every thread still inside its objective has made its call, so objectives that call
    the model a different number of times cannot deadlock (a round then holds fewer seeds)."""

    def __init__(self, run_batch):
        self.run_batch = run_batch  # {seed index: (args, kwargs)} -> {seed index: output}
        self.cond = threading.Condition()
        self.active = 0
        self.pending: dict = {}
        self.results: dict = {}
        self.error: BaseException | None = None

    def start(self, n: int) -> None:
        self.active, self.pending, self.results, self.error = n, {}, {}, None

    def call(self, k: int, args: tuple, kwargs: dict):
        with self.cond:
            self.pending[k] = (args, kwargs)
            if len(self.pending) == self.active:
                self._flush()
            else:
                self.cond.wait_for(lambda: k in self.results or self.error is not None)
            if self.error is not None:
                raise RuntimeError("another seed's model call failed") from self.error
            return self.results.pop(k)

    def leave(self) -> None:
        with self.cond:
            self.active -= 1
            if self.pending and len(self.pending) == self.active:
                self._flush()

    def _flush(self) -> None:
        batch, self.pending = self.pending, {}
        try:
            self.results.update(self.run_batch(batch))
        except BaseException as e:
            self.error = e
            raise
        finally:
            self.cond.notify_all()


class ParamSlice:
    """Seed k's slice of a stacked parameter, for objectives that read or filter ``p.grad``."""

    def __init__(self, stacked: torch.Tensor, k: int):
        self.stacked, self.k = stacked, k

    @property
    def data(self) -> torch.Tensor:
        return self.stacked.data[self.k]

    @property
    def grad(self) -> torch.Tensor | None:
        return None if self.stacked.grad is None else self.stacked.grad[self.k]


class SeedModel:
    """What an objective sees as ``model`` for seed k: calls go through the rendezvous."""

    def __init__(self, stack: SeedStack, k: int):
        self.stack, self.k = stack, k

    def __call__(self, *args, **kwargs):
        return self.stack.rendezvous.call(self.k, args, kwargs)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.stack.params["tok_emb.weight"][self.k])

    @property
    def tok_emb(self):
        return SimpleNamespace(weight=self.stack.params["tok_emb.weight"][self.k])

    @property
    def token_embeddings(self) -> torch.Tensor:
        return self.stack.params["tok_emb.weight"][self.k]

    def named_parameters(self):
        for name, p in self.stack.params.items():
            yield name, ParamSlice(p, self.k)

    def parameters(self):
        for _, p in self.named_parameters():
            yield p


class SeedStack:
    """K models of one architecture as stacked ``[K, ...]`` leaf parameters and a vmapped forward."""

    def __init__(self, models: list[torch.nn.Module]):
        from torch.func import stack_module_state

        params, _ = stack_module_state(models)
        self.params = {name: p.detach().requires_grad_() for name, p in params.items()}
        self.template = models[0]  # supplies the buffers; its own parameters are replaced in every call
        for module in self.template.modules():
            if hasattr(module, "plain_ops"):
                module.plain_ops = True
        self.rendezvous = Rendezvous(self._run_batch)

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def _run_batch(self, batch: dict) -> dict:
        from torch.func import functional_call, vmap

        ks = sorted(batch)
        (args0, kwargs0) = batch[ks[0]]
        names = [f"arg{i}" for i in range(len(args0))] + sorted(kwargs0)
        values = [[*batch[k][0], *(batch[k][1][n] for n in sorted(kwargs0))] for k in ks]
        inputs, in_dims = [], []
        for i in range(len(names)):
            column = [v[i] for v in values]
            if not isinstance(column[0], torch.Tensor) or all(c is column[0] for c in column):
                inputs.append(column[0])  # shared by every seed (the full batch, or a flag)
                in_dims.append(None)
            else:
                inputs.append(torch.stack(column))
                in_dims.append(0)
        n_args = len(args0)
        params = self.params if len(ks) == len(self) else {
            name: p[torch.tensor(ks, device=p.device)] for name, p in self.params.items()}

        def forward(p, *flat):
            kwargs = dict(zip(names[n_args:], flat[n_args:], strict=True))
            return functional_call(self.template, p, tuple(flat[:n_args]), kwargs)

        out = vmap(forward, in_dims=(0, *in_dims))(params, *inputs)
        return {k: _index(out, i) for i, k in enumerate(ks)}

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module, k: int) -> torch.nn.Module:
        for name, p in model.named_parameters():
            p.copy_(self.params[name][k])
        return model

    @torch.no_grad()
    def load_seed(self, k: int, model_state: dict) -> None:
        for name, p in self.params.items():
            p[k].copy_(model_state[name])


def _index(out, i: int):
    if isinstance(out, torch.Tensor):
        return out[i]
    return type(out)(_index(o, i) for o in out)


def _objective_calls(pool, objectives, models, xs, ys, step, rendezvous):
    """Run every seed's objective (in its own thread); return their losses, stats."""
    rendezvous.start(len(objectives))

    def run(k):
        try:
            return objectives[k](models[k], xs[k], ys[k], step)
        finally:
            rendezvous.leave()

    futures = [pool.submit(run, k) for k in range(len(objectives))]
    return [f.result() for f in futures]


def seed_batches(task, seeds: list[int], batch_size: int | None, step: int) -> tuple[list, list]:
    """Each seed's training batch at ``step`` (its own data order, as in its single run)."""
    from nsrun.runner.train import batch_indices

    xs, ys = [], []
    for s in seeds:
        idx = batch_indices(len(task.train.x), batch_size, s, step)
        if idx is None:
            xs.append(task.train.x)
            ys.append(task.train.y)
        else:
            idx = idx.to(task.train.x.device)
            xs.append(task.train.x[idx])
            ys.append(task.train.y[idx])
    return xs, ys


def vmapped_step(stack: SeedStack, objectives: list, seed_models: list[SeedModel], optimizer, xs: list, ys: list,
                 step: int, pool: ThreadPoolExecutor, grad_clip: float | None = None) -> list:
    """One optimiser update of every seed: the objectives (batched model calls), one backward, the
    objectives' gradient hooks, per-seed clipping, the stacked AdamW step. Returns each seed's stats."""
    results = _objective_calls(pool, objectives, seed_models, xs, ys, step, stack.rendezvous)
    optimizer.zero_grad(set_to_none=True)
    torch.stack([loss for loss, _ in results]).sum().backward()
    for objective, seed_model in zip(objectives, seed_models, strict=True):
        if hasattr(objective, "after_backward"):
            objective.after_backward(seed_model)
    if grad_clip:
        clip_per_seed(list(stack.params.values()), grad_clip)
    optimizer.step()
    return [stats for _, stats in results]


def seed_optimizer_state(state: dict, k: int) -> dict:
    """Seed k's slice of the stacked optimiser's state_dict (the format of a plain run's)."""
    return {"state": {i: {name: (v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v)
                          for name, v in s.items()} for i, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def stacked_optimizer_state(states: list[dict]) -> dict:
    first = states[0]
    return {"state": {i: {name: (torch.stack([st["state"][i][name] for st in states])
                                 if torch.is_tensor(v) and v.dim() > 0 else v)
                          for name, v in s.items()} for i, s in first["state"].items()},
            "param_groups": first["param_groups"]}


def clip_per_seed(params: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` for each seed: scale seed k's gradients by min(1, max_norm / ||g_k||)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # [K]
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))


def _catch_up(cfg, run_dir: Path, seeds: list[int], ckpts: list[dict | None]) -> bool:
    """Bring seeds whose checkpoint lags (a run stopped while writing its checkpoints) to the step of the
    most advanced one with the plain loop; returns whether anything ran."""
    from nsrun.runner.train import DONE_MARKER, train

    steps = [c["step"] if c is not None else 0 for c in ckpts]
    target = max(steps)
    if target == min(steps):
        return False
    for s, step in zip(seeds, steps, strict=True):
        if step < target:
            log.info("seed %d is at step %d, the others at %d: catching it up", s, step, target)
            short = seed_config(cfg, s)
            with open_dict(short):
                short.train.steps = target
            train(short, seed_dir(run_dir, s))
            if target < cfg.train.steps:
                (seed_dir(run_dir, s) / DONE_MARKER).unlink(missing_ok=True)
    return True


def train_vmapped(cfg: DictConfig, run_dir: Path, seeds: list[int]) -> dict:
    from nsrun.runner.checkpoint import CHECKPOINT_DIR, LAST, load_checkpoint, rng_state, save_checkpoint
    from nsrun.runner.config import build_logger, build_model, build_objective, build_task
    from nsrun.runner.threads import apply_thread_policy, deterministic_mode
    from nsrun.runner.tracking import METRICS_FILE, TIMING_FILE, JsonlWriter
    from nsrun.runner.train import (
        DONE_MARKER,
        RESOLVED_CONFIG,
        Interrupted,
        _progress,
        check_run_dir,
        eval_metrics,
        lr_lambda,
        make_optimizer,
        resolve_device,
        run_id_for,
        stop_on_signals,
    )

    K = len(seeds)
    cfgs = [seed_config(cfg, s) for s in seeds]
    dirs = [seed_dir(run_dir, s) for s in seeds]
    ckpt_paths = [d / CHECKPOINT_DIR / LAST for d in dirs]
    for d, c in zip(dirs, cfgs, strict=True):
        d.mkdir(parents=True, exist_ok=True)
        check_run_dir(d, c)
    ckpts = [load_checkpoint(p) if p.exists() else None for p in ckpt_paths]
    if _catch_up(cfg, run_dir, seeds, ckpts):
        ckpts = [load_checkpoint(p) for p in ckpt_paths]
    if all(c is not None and c["step"] >= cfg.train.steps for c in ckpts) and all(
            (d / DONE_MARKER).exists() for d in dirs):
        log.info("seeds in %s are complete (step %d); nothing to do", run_dir, ckpts[0]["step"])
        return {s: c.get("last_row", {}) for s, c in zip(seeds, ckpts, strict=True)}
    for d, c in zip(dirs, cfgs, strict=True):
        if not (d / RESOLVED_CONFIG).exists():
            (d / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(c, resolve=True))

    device = resolve_device(cfg.train.device)
    log.info("threads: %s", apply_thread_policy(cfg.train.threads, device))
    deterministic_mode(cfg.train.deterministic, device)
    task = build_task(cfg).to(device)
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(build_model(cfg, task).to(device))
    eval_model = build_model(cfg, task).to(device)
    objectives = [build_objective(c, task) for c in cfgs]
    writers = [(JsonlWriter(d / METRICS_FILE), JsonlWriter(d / TIMING_FILE)) for d in dirs]
    run_ids = [run_id_for(d) for d in dirs]
    start, clock = 0, {"train": 0.0, "eval": 0.0}
    if ckpts[0] is not None:
        for k, c in enumerate(ckpts):
            models[k].load_state_dict(c["model"])
            objectives[k].load_state_dict(c["objective"])
            run_ids[k] = c.get("run_id", run_ids[k])
            for w in writers[k]:
                w.truncate_after(c["step"])
        start, clock = ckpts[0]["step"], dict(ckpts[0]["clock"])
        log.info("resuming seeds %d..%d in %s from step %d", seeds[0], seeds[-1], run_dir, start)
    else:
        for metrics, timing in writers:
            for path in (metrics.path, timing.path):
                if path.exists():
                    path.replace(path.with_suffix(path.suffix + f".orphan-{int(time.time())}"))
    stack = SeedStack(models)
    params = list(stack.params.values())
    optimizer = make_optimizer(params, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim.warmup_steps))
    if ckpts[0] is not None:
        optimizer.load_state_dict(stacked_optimizer_state([c["optimizer"] for c in ckpts]))
        scheduler.load_state_dict(ckpts[0]["scheduler"])
    seed_models = [SeedModel(stack, k) for k in range(K)]
    trackers = [build_logger(c, d, rid) for c, d, rid in zip(cfgs, dirs, run_ids, strict=True)]
    last_rows: list[dict] = [c.get("last_row", {}) if c is not None else {} for c in ckpts]

    def do_eval(step: int) -> None:
        t0 = time.perf_counter()
        rows = []
        for k in range(K):
            stack.copy_to(eval_model, k)
            row = {"step": step, **eval_metrics(eval_model, task, cfgs[k], step), "lr": scheduler.get_last_lr()[0]}
            if hasattr(objectives[k], "log_stats"):
                row.update(objectives[k].log_stats())
            rows.append(row)
        clock["eval"] += time.perf_counter() - t0
        for k, row in enumerate(rows):
            writers[k][0].append(row)
            writers[k][1].append({"step": step, "train_seconds": clock["train"], "eval_seconds": clock["eval"],
                                  "parallel_seeds": K})
            trackers[k].log(row, step)
            last_rows[k] = row
        accs = [r["val_acc"] for r in rows]
        if mode == "log":
            log.info("step %d/%d  %d seeds: val_acc mean %.3f (min %.3f, max %.3f)", step, cfg.train.steps, K,
                     sum(accs) / K, min(accs), max(accs))
        elif bar is not None:
            bar.set_postfix(val_acc=f"{sum(accs) / K:.3f}")

    def do_checkpoint(step: int) -> None:
        opt_state = optimizer.state_dict()
        for k in range(K):
            save_checkpoint(ckpt_paths[k], {
                "step": step, "model": stack.copy_to(eval_model, k).state_dict(),
                "optimizer": seed_optimizer_state(opt_state, k), "scheduler": scheduler.state_dict(),
                "objective": objectives[k].state_dict(), "rng": rng_state({}), "clock": clock,
                "run_id": run_ids[k], "last_row": last_rows[k],
            })

    mode, bar = _progress(cfg, start)
    exit_code = 1
    try:
        with stop_on_signals() as stop, ThreadPoolExecutor(max_workers=K, thread_name_prefix="seed") as pool:
            if start == 0:
                do_eval(0)
            step = start
            while step < cfg.train.steps:
                t0 = time.perf_counter()
                xs, ys = seed_batches(task, seeds, cfg.train.batch_size, step)
                vmapped_step(stack, objectives, seed_models, optimizer, xs, ys, step, pool, cfg.optim.grad_clip)
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
                    log.info("signal %d: checkpoints written at step %d", stop["signal"], step)
                    stop["hand_over"]()
                    raise Interrupted(f"stopped by signal {stop['signal']} at step {step}; checkpoints written")
        for d in dirs:
            (d / DONE_MARKER).write_text(f"{cfg.train.steps}\n")
        for tracker, row in zip(trackers, last_rows, strict=True):
            tracker.summary(row)
        exit_code = 0
    finally:
        if bar is not None:
            bar.close()
        for tracker in trackers:
            tracker.finish(exit_code)
    return dict(zip(seeds, last_rows, strict=True))
