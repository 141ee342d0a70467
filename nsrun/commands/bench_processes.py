"""``make bench``'s whole-process sections: ``nsrun`` start-up (to ``--help`` and to the first step) and a sweep of
small jobs one after another vs ``hydra/launcher=local_cores`` (wall time of the whole command)."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nsrun.commands.bench_speed import bench_imports


def run_cli(args: list[str], cwd: Path, check: bool = True) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    nsrun = shutil.which("nsrun")
    cmd = [nsrun] if nsrun else [sys.executable, "-m", "nsrun.commands.nsrun"]
    t0 = time.perf_counter()
    res = subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if check and res.returncode != 0:
        raise RuntimeError(f"nsrun {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return elapsed


FIRST_STEP = ["train.steps=1", "logger=none", "stability.enabled=false", "train.progress=none"]


def bench_startup(report, repeats: int, tiny: bool, tmp: Path) -> None:
    helps = [run_cli(["--help"], tmp) for _ in range(repeats)]
    report.add("startup", "nsrun --help", statistics.median(helps), "s", "< 2", statistics.median(helps) < 2)
    if tiny:
        return
    first = statistics.median(run_cli([*FIRST_STEP, f"hydra.run.dir={tmp / f'first{i}'}"], tmp) for i in range(repeats))
    report.add("startup", "nsrun start-up to first step", first, "s", "<= 3", first <= 3,
               note="whole process of nsrun " + " ".join(FIRST_STEP) + ": evals at steps 0 and 1 included")
    bench_imports(report, repeats)
    runs = [run_cli(["train.steps=1", "logger=none", f"hydra.run.dir={tmp / f'one{i}'}"], tmp) for i in range(repeats)]
    report.add("startup", "nsrun train.steps=1 (default modadd run)", statistics.median(runs), "s",
               note="imports, data, 2 evals with stability logging")


LAUNCHER_WORKLOADS = {  # a sweep of 4 jobs; steps such that a job trains for some seconds
    "parity": ["task=parity", "train.steps=1500"],
    "modadd p=23 tiny": ["task.p=23", "model=tiny", "train.steps=4000"],
}


def bench_launcher(report, tmp: Path, repeats: int, n_jobs: int = 4) -> None:
    """Sweeps of ``n_jobs`` runs: Hydra's basic launcher (one after another, with torch's default threads and
    with 1 thread) vs ``hydra/launcher=local_cores``; wall time of the whole command, start-up included."""
    from nsrun.runner.threads import available_cores

    cores = available_cores()
    for workload, overrides in LAUNCHER_WORKLOADS.items():
        job = [f"seed={','.join(str(s) for s in range(n_jobs))}", *overrides, "logger=none", "train.progress=none",
               "stability.enabled=false", "train.eval_every=100000"]
        variants = {"sequential": [], "sequential, 1 thread": ["train.threads=1"],
                    "local_cores": ["hydra/launcher=local_cores"]}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(repeats):
            for i, (name, extra) in enumerate(variants.items()):
                sweep_dir = tmp / f"sweep_{len(report.rows)}_{r}_{i}"
                times[name].append(run_cli(["-m", *job, *extra, f"hydra.sweep.dir={sweep_dir}"], tmp))
        wall = {name: statistics.median(ts) for name, ts in times.items()}
        name = f"{n_jobs} {workload} jobs"
        report.add("launcher", f"{name}: sequential sweep wall time", wall["sequential"], "s",
                   note=f"{cores} cores, torch's default threads")
        ratio = wall["sequential"] / wall["local_cores"]
        report.add("launcher", f"{name}: local_cores throughput / sequential", ratio, "x",
                   ">= 1.7 (2 cores)" if cores == 2 else "", ratio >= 1.7 if cores == 2 else None,
                   note="whole command, start-up included")
        report.add("launcher", f"{name}: local_cores / sequential with 1 thread per job",
                   wall["sequential, 1 thread"] / wall["local_cores"], "x", note="the gain from the processes alone")
