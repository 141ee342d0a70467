"""The Hydra launcher behind ``hydra/launcher=local_cores`` and ``hydra/launcher=local_gpus``.

Hydra discovers launchers only inside the ``hydra_plugins`` package; the work is done in
``nsrun.launch.local_pool``, imported when a sweep starts so that plugin discovery stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LocalPoolLauncher(Launcher):
    def __init__(self, device: str = "cpu", n_workers: int | None = None, threads_per_job: int | None = None,
                 gpus: Sequence[int] | None = None, jobs_per_gpu: int = 1) -> None:
        self.options = {"device": device, "n_workers": n_workers, "threads_per_job": threads_per_job,
                        "gpus": list(gpus) if gpus is not None else None, "jobs_per_gpu": jobs_per_gpu}
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from nsrun.launch.local_pool import launch

        return launch(self, job_overrides, initial_job_idx)
