"""The local pool launcher (hydra/launcher=local_cores, local_gpus): slot assignment and real sweeps on CPU."""

from __future__ import annotations

import json

import pytest

from nsrun.launch.local_pool import visible_gpus, worker_slots
from nsrun.runner.errors import UsageError
from nsrun.runner.train import train
from tests.conftest import TINY, compose_cfg, run_cli


def test_cpu_slots_one_single_threaded_worker_per_core_without_gpus():
    slots = worker_slots("cpu", threads_per_job=1, cores=4)
    assert len(slots) == 4
    assert all(s["CUDA_VISIBLE_DEVICES"] == "" and s["OMP_NUM_THREADS"] == "1" for s in slots)
    assert [s["NSRUN_WORKER_THREADS"] for s in worker_slots("cpu", n_workers=2, cores=8)] == ["4", "4"]


def test_gpu_slots_pin_each_worker_to_one_gpu_round_robin():
    slots = worker_slots("cuda", gpus=[0, 1, 3], cores=12)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1", "3"]
    assert all(s["NSRUN_WORKER_THREADS"] == "4" for s in slots)
    shared = worker_slots("cuda", gpus=[0, 1], jobs_per_gpu=2, cores=8)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in shared] == ["0", "1", "0", "1"]
    assert [s["CUDA_VISIBLE_DEVICES"] for s in worker_slots("cuda", gpus=[0, 1], jobs_per_gpu=2, n_workers=3)] == [
        "0", "1", "0"]


def test_visible_gpus_follow_cuda_visible_devices():
    assert visible_gpus(environ={"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus(environ={"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus([5], environ={"CUDA_VISIBLE_DEVICES": "2,3"}) == ["5"]
    with pytest.raises(UsageError, match="no CUDA device"):
        worker_slots("cuda", environ={"CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(UsageError, match="hydra.launcher.device"):
        worker_slots("tpu")


def _sweep(tmp_path, launcher_args, seeds, ok=True):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "train.steps=20", "train.eval_every=10", "logger=none",
            f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={sweep}", *launcher_args]
    res = run_cli(args, cwd=tmp_path)
    assert (res.returncode == 0) == ok, res.stdout + res.stderr
    return sweep, res, [json.loads(line) for line in (sweep / "local_pool.jsonl").read_text().splitlines()]


def test_local_cores_sweep_matches_a_single_run(tmp_path):
    sweep, _, jobs = _sweep(tmp_path, ["hydra/launcher=local_cores", "hydra.launcher.n_workers=2"], seeds=(0, 1))
    assert sorted(j["job"] for j in jobs) == [0, 1]
    assert {j["worker"] for j in jobs} == {0, 1} and all(j["threads"] == 1 for j in jobs)
    train(compose_cfg([*TINY, "train.steps=20", "train.eval_every=10", "logger=none", "seed=1"]), tmp_path / "one")
    assert (sweep / "1" / "metrics.jsonl").read_bytes() == (tmp_path / "one" / "metrics.jsonl").read_bytes()


def test_local_gpus_sweep_runs_one_job_per_gpu_at_a_time(tmp_path):
    # CPU-runnable: two pretend GPU ids; the jobs train on the CPU and record what they were pinned to.
    # Job 3's run directory holds another run's config, so it fails; the others still finish.
    (tmp_path / "sweep" / "3").mkdir(parents=True)
    (tmp_path / "sweep" / "3" / "resolved_config.yaml").write_text("seed: 99\n")
    sweep, res, jobs = _sweep(tmp_path, ["hydra/launcher=local_gpus", "hydra.launcher.gpus=[0,1]", "train.device=cpu"],
                              seeds=(0, 1, 2, 3), ok=False)
    assert "different config" in res.stdout + res.stderr
    assert sorted(j["job"] for j in jobs) == [0, 1, 2, 3]
    assert [j["status"] for j in sorted(jobs, key=lambda j: j["job"])] == ["COMPLETED"] * 3 + ["FAILED"]
    assert all((sweep / str(i) / "DONE").exists() for i in range(3))
    by_gpu: dict[str, list] = {}
    for j in jobs:
        by_gpu.setdefault(j["cuda_visible_devices"], []).append((j["start"], j["end"]))
    assert set(by_gpu) == {"0", "1"}
    for intervals in by_gpu.values():
        intervals.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in zip(intervals, intervals[1:], strict=False))
