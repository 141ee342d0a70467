"""The runs that ``make bench`` times: a composed config as the training loop runs it (:class:`Run`: ``step()`` is
``train_step`` of its replicas) and K seeds as one vmapped stack (:class:`SeedBatch`)."""

from __future__ import annotations

import torch

from nsrun.runner.config import CONF_DIR

COMMON = ["logger=none", "train.progress=none"]

_composed: dict = {}


def compose(overrides: list[str]):
    """The composed config (memoised: Hydra takes a good fraction of a second per composition)."""
    import copy

    key = tuple(overrides)
    if key not in _composed:
        _composed[key] = _compose(overrides)
    return copy.deepcopy(_composed[key])


def _compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=[*COMMON, *overrides])
    finally:
        GlobalHydra.instance().clear()


_tasks: dict = {}


def build_task_cached(cfg, device):
    from omegaconf import OmegaConf

    from nsrun.runner.config import build_task

    key = (OmegaConf.to_yaml(cfg.task), str(device))
    if key not in _tasks:
        _tasks[key] = build_task(cfg).to(device)
    return _tasks[key]


class Run:
    """One run of a config as the training loop runs it: ``step()`` is ``train_step`` of its replicas."""

    def __init__(self, overrides: list[str], device: torch.device, seed: int = 0, fast_paths: bool | None = None):
        from nsrun.runner.config import validate
        from nsrun.runner.replicas import build_replicas

        self.cfg = compose([*overrides, f"seed={seed}"])
        validate(self.cfg)
        self.task = build_task_cached(self.cfg, device)
        self.replicas = build_replicas([self.cfg], device, task=self.task)
        self.model = self.replicas.model
        if fast_paths is not None:
            self.model.set_fast_paths(fast_paths)
        self.step_no = 0

    def step(self) -> None:
        self.replicas.train_step(self.step_no)
        self.step_no += 1

    def examples_per_step(self) -> int:
        return self.cfg.train.batch_size or len(self.task.train.x)


class SeedBatch:
    """K seeds of one config as one vmapped stack (``train.parallel_backend=vmap``)."""

    def __init__(self, overrides: list[str], device: torch.device, k: int):
        from nsrun.runner.replicas import build_replicas

        cfgs = [compose([*overrides, f"seed={s}"]) for s in range(k)]
        self.replicas = build_replicas(cfgs, device, backend="vmap", task=build_task_cached(cfgs[0], device))
        self.step_no = 0

    def step(self) -> None:
        self.replicas.train_step(self.step_no)
        self.step_no += 1

    def close(self) -> None:
        self.replicas.close()


