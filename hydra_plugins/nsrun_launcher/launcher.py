"""Hydra launcher plugins for nsrun sweeps: submitit's SLURM and local launchers with two changes.

hydra-submitit-launcher's ``launch`` waits for the jobs in order and raises at the first that failed, so
the later jobs are neither waited for nor reported, and its wait relies on ``sacct`` (it never returns
for a job that died without a result on a cluster without accounting). These subclasses submit exactly
as it does (same executor parameters, same job array, same ``checkpoint`` for requeue on preemption and
timeout, Hydra's output layout ``multirun/DATE/TIME/N`` with ``.submitit/``), then wait for every job with
``squeue`` and report the failed ones with their log paths (see :mod:`nsrun.launch.slurm`).

Selected by the configs in ``conf/hydra/launcher/`` (``hydra/launcher=submitit_slurm`` and the named
profiles). Hydra only instantiates launchers that live in the ``hydra_plugins`` package.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import OmegaConf

from nsrun.launch.slurm import silence_schema_warning

log = logging.getLogger(__name__)

silence_schema_warning()  # in the jobs, which compose the sweep config again (the nsrun command does it itself)


class _WaitForAll:
    _EXECUTOR = "abstract"

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        from nsrun.launch.slurm import wait_and_report

        assert self.config is not None
        assert len(job_overrides) > 0
        # executor and parameters exactly as in hydra-submitit-launcher's BaseSubmititLauncher.launch
        init_keys = {"max_num_timeout"}
        init_params = {"folder": self.params["submitit_folder"]}
        init_params.update({f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in init_keys})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            k if k in base else f"{self._EXECUTOR}_{k}": v
            for k, v in self.params.items() if k not in init_keys | {"submitit_folder"}
        })

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))

        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        if jobs:
            first = jobs[0]
            log.info(f"submitted {len(jobs)} jobs ({first.job_id.split('_')[0]}); logs in {first.paths.folder.parent}")
        return wait_and_report(jobs, job_overrides, initial_job_idx, self._EXECUTOR)


class NsrunSlurmLauncher(_WaitForAll, SlurmLauncher):
    _EXECUTOR = "slurm"


class NsrunLocalLauncher(_WaitForAll, LocalLauncher):
    _EXECUTOR = "local"
