"""Replicas: what the training loop trains. One model (:class:`SingleModel`), or K seeds of one config as one
vmapped stack (:class:`VmappedSeeds`). Both offer the same four calls, so the loop, ``train.parallel_seeds``
and ``make bench`` run the same step:

* ``train_step(step)``: one optimiser update of every replica (batch, objective, backward, gradient hooks,
  clipping, AdamW, learning-rate schedule); returns the replicas' training losses ``[K]`` (detached, on the
  device: reading them is left to the caller, who may avoid a synchronisation per step);
* ``eval_rows(step)``: one metrics row per replica;
* ``state()`` / ``load_state(states)``: per-replica payloads for the checkpoints (the plain-run format, so a
  seed of a vmapped stack resumes as a single run and the other way round).
"""

from __future__ import annotations

import torch

from nsrun.runner.config import build_model, build_objective, build_task, lr_lambda, make_optimizer
from nsrun.runner.evaluation import eval_metrics, eval_settings


def batch_indices(n: int, batch_size: int | None, seed: int, step: int) -> torch.Tensor | None:
    """Indices of the training batch at ``step``: None for full batch; otherwise a slice of a permutation that
    depends only on (seed, epoch), so resuming needs no sampler state."""
    if batch_size is None or batch_size >= n:
        return None
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[i * batch_size : (i + 1) * batch_size]


def training_batch(task, batch_size: int | None, seed: int, step: int):
    """``(x, y)`` of seed ``seed``'s training batch at ``step``."""
    idx = batch_indices(len(task.train.x), batch_size, seed, step)
    if idx is None:
        return task.train.x, task.train.y
    idx = idx.to(task.train.x.device)
    return task.train.x[idx], task.train.y[idx]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SingleModel:
    """One model: the plain training step."""

    def __init__(self, cfg, seed: int, device: torch.device, task=None):
        self.seeds = [seed]
        self.task = task if task is not None else build_task(cfg).to(device)
        torch.manual_seed(seed)
        self.model = build_model(cfg, self.task).to(device)
        self.optimizer = make_optimizer(self.model.parameters(), cfg, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.optim.warmup_steps))
        self.objective = build_objective(cfg, self.task)
        # the objective trains through the compiled module; eval and checkpoints use the plain one (same weights)
        self.train_model = torch.compile(self.model) if cfg.train.get("compile") else self.model
        self.batch_size, self.grad_clip = cfg.train.batch_size, cfg.optim.grad_clip
        self.eval_settings = eval_settings(cfg)
        self.model.train()

    def train_step(self, step: int) -> torch.Tensor:
        x, y = training_batch(self.task, self.batch_size, self.seeds[0], step)
        loss, _ = self.objective(self.train_model, x, y, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hasattr(self.objective, "after_backward"):
            self.objective.after_backward(self.model)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach().reshape(1)

    def eval_rows(self, step: int) -> list[dict]:
        row = {"step": step, **eval_metrics(self.model, self.task, self.eval_settings, self.seeds[0], step),
               "lr": self.scheduler.get_last_lr()[0]}
        if hasattr(self.objective, "log_stats"):
            row.update(self.objective.log_stats())
        return [row]

    def state(self) -> list[dict]:
        return [{"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "objective": self.objective.state_dict()}]

    def load_state(self, states: list[dict]) -> None:
        (s,) = states
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.objective.load_state_dict(s["objective"])

    def close(self) -> None:
        pass


class VmappedSeeds:
    """K seeds of one config (``cfgs[k]`` differs only in ``seed``) as one stacked model: one forward and one
    backward pass for all K; metrics equal those of K separate runs up to float rounding (batched matmuls sum in
    another order)."""

    def __init__(self, cfgs: list, device: torch.device, task=None):
        from nsrun.runner.seed_stack import SeedStack

        cfg = cfgs[0]
        self.seeds = [int(c.seed) for c in cfgs]
        self.task = task if task is not None else build_task(cfg).to(device)
        models = []
        for s in self.seeds:
            torch.manual_seed(s)
            models.append(build_model(cfg, self.task).to(device))
        self.eval_model = build_model(cfg, self.task).to(device)
        self.objectives = [build_objective(c, self.task) for c in cfgs]
        self.stack = SeedStack(models)
        self.optimizer = make_optimizer(list(self.stack.params.values()), cfg, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.optim.warmup_steps))
        self.batch_size, self.grad_clip = cfg.train.batch_size, cfg.optim.grad_clip
        self.eval_settings = eval_settings(cfg)

    def train_step(self, step: int) -> torch.Tensor:
        from nsrun.runner.seed_stack import clip_per_seed

        batches = [training_batch(self.task, self.batch_size, s, step) for s in self.seeds]
        results = self.stack.run_objectives(self.objectives, batches, step)
        self.optimizer.zero_grad(set_to_none=True)
        losses = torch.stack([loss for loss, _ in results])
        losses.sum().backward()
        for objective, seed_model in zip(self.objectives, self.stack.seed_models, strict=True):
            if hasattr(objective, "after_backward"):
                objective.after_backward(seed_model)
        if self.grad_clip:
            clip_per_seed(list(self.stack.params.values()), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return losses.detach()

    def eval_rows(self, step: int) -> list[dict]:
        rows = []
        for k, seed in enumerate(self.seeds):
            self.stack.copy_to(self.eval_model, k)
            row = {"step": step, **eval_metrics(self.eval_model, self.task, self.eval_settings, seed, step),
                   "lr": self.scheduler.get_last_lr()[0]}
            if hasattr(self.objectives[k], "log_stats"):
                row.update(self.objectives[k].log_stats())
            rows.append(row)
        return rows

    def state(self) -> list[dict]:
        from nsrun.runner.seed_stack import seed_optimizer_state

        opt_state = self.optimizer.state_dict()
        # clone: the eval model's tensors are overwritten by the next seed's copy
        return [{"model": {n: t.clone() for n, t in self.stack.copy_to(self.eval_model, k).state_dict().items()},
                 "optimizer": seed_optimizer_state(opt_state, k), "scheduler": self.scheduler.state_dict(),
                 "objective": self.objectives[k].state_dict()} for k in range(len(self.seeds))]

    def load_state(self, states: list[dict]) -> None:
        from nsrun.runner.seed_stack import stacked_optimizer_state

        for k, s in enumerate(states):
            self.stack.load_seed(k, s["model"])
            self.objectives[k].load_state_dict(s["objective"])
        self.optimizer.load_state_dict(stacked_optimizer_state([s["optimizer"] for s in states]))
        self.scheduler.load_state_dict(states[0]["scheduler"])

    def close(self) -> None:
        self.stack.close()


def build_replicas(cfgs: list, device: torch.device, backend: str = "single", task=None):
    """:class:`SingleModel` for one config, :class:`VmappedSeeds` for ``backend="vmap"``."""
    if backend == "vmap":
        return VmappedSeeds(cfgs, device, task)
    (cfg,) = cfgs
    return SingleModel(cfg, int(cfg.seed), device, task)
