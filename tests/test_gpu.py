"""The GPU paths on a real CUDA device (run by launch/gpu-check.sh as ``pytest -m gpu``): a run on cuda
gives the CPU's metrics, checkpoints move between cuda and CPU, K vmapped seeds equal K separate runs on cuda,
and the local_gpus launcher pins each job to one GPU. Skipped without CUDA; the default suite deselects them.

``NSRUN_GPU_TEST_DEVICE=cpu`` runs the same tests with the CPU standing in for the GPU (the gpu-check dry run,
``GPU_CHECK_DRY=1``), which checks their logic on a machine without one; the launcher test then pins its jobs to
two pretend GPU ids, as tests/test_parallel_launcher.py does.

Tolerance (:func:`assert_rows_within`): every generator of nsrun draws on the CPU (init, data order, noise,
eval subsets), so a cuda run sees the same numbers as a CPU run and differs only by kernels' float32 rounding
(torch keeps fp32 matmuls in full fp32 on cuda unless told otherwise; nsrun never says otherwise). On the CPU,
changing the summation order (the model's fast paths off instead of on) moved the metrics of this 40-step tiny
run by at most 2.4e-7 absolute on losses and 1.2e-4 relative on the stability standard errors (values ~1e-6, a
difference of near-equal sums), measured 2026-11-29. AdamW divides each update by the gradient's running RMS,
which can amplify such rounding where gradients are near zero, so we allow 1e-3 relative (about 10^4 times the
losses' CPU difference), 1e-5 absolute for values near zero, and an accuracy within 0.01 (two of the ~265
validation examples of p = 23 flipping).
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from nsrun.runner.rundir import read_jsonl
from nsrun.runner.train import parallel_backend, train
from tests.conftest import TINY, compose_cfg, run_cli

DEVICE = os.environ.get("NSRUN_GPU_TEST_DEVICE", "cuda")  # cpu: the dry run's stand-in for the GPU
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")]

BASE = [*TINY, "train.eval_every=10", "stability.n_examples=64", "stability.rhos=[0.5]"]
REGULARISED = ["reg=stability"]  # the concatenated clean + noisy pass (nsrun/runner/replicas.py)
REL, ABS, ACC = 1e-3, 1e-5, 0.01  # see the module docstring


def assert_rows_within(a: list[dict], b: list[dict]) -> None:
    """Same steps and keys; floats within the tolerance of the module docstring."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for key, va in ra.items():
            if key.endswith("_acc"):
                assert abs(va - rb[key]) <= ACC, (ra["step"], key, va, rb[key])
            elif isinstance(va, float):
                assert math.isclose(va, rb[key], rel_tol=REL, abs_tol=ABS), (ra["step"], key, va, rb[key])
            else:
                assert va == rb[key], (ra["step"], key)


def run_on(tmp_path, name: str, device: str, overrides=(), steps: int = 40) -> list[dict]:
    train(compose_cfg([*BASE, *REGULARISED, *overrides, f"train.device={device}", f"train.steps={steps}"]),
          tmp_path / name)
    return read_jsonl(tmp_path / name / "metrics.jsonl")


def devices_used(run_dir) -> list[str]:
    return [json.loads(line)["device"] for line in (run_dir / "runtime.jsonl").read_text().splitlines()]


def test_run_on_gpu_gives_the_cpu_metrics(tmp_path):
    gpu = run_on(tmp_path, "gpu", DEVICE)
    cpu = run_on(tmp_path, "cpu", "cpu")
    assert devices_used(tmp_path / "gpu") == [DEVICE]
    assert [r["step"] for r in gpu] == [0, 10, 20, 30, 40]
    assert gpu[-1]["train_loss"] < gpu[0]["train_loss"]  # it trained
    assert_rows_within(gpu, cpu)


@pytest.mark.parametrize("first,then", [(DEVICE, "cpu"), ("cpu", DEVICE)])
def test_checkpoint_moves_between_gpu_and_cpu(tmp_path, first, then):
    """20 steps on one device, extended to 40 on the other from its checkpoint: the metrics continue as an
    uninterrupted run's."""
    run_on(tmp_path, "moved", first, ["train.checkpoint_every=10"], steps=20)
    moved = run_on(tmp_path, "moved", then, ["train.checkpoint_every=10"], steps=40)
    assert devices_used(tmp_path / "moved") == [first, then]
    assert_rows_within(moved, run_on(tmp_path, "straight", first))


@pytest.mark.parametrize("overrides", [
    ["train.batch_size=64", "optim.grad_clip=0.5"],
    ["reg=grokfast", "stability.enabled=false"],
])
def test_vmapped_seeds_on_gpu_match_separate_runs(tmp_path, overrides):
    seeds = (3, 4, 5)
    parallel = compose_cfg([*BASE, *REGULARISED, *overrides, "seed=3", "train.parallel_seeds=3",
                            f"train.device={DEVICE}", "train.steps=20"])
    if DEVICE == "cuda":
        assert parallel_backend(parallel) == "vmap"  # train.parallel_backend=auto picks vmap on cuda
    with_vmap = compose_cfg([*BASE, *REGULARISED, *overrides, "seed=3", "train.parallel_seeds=3",
                             "train.parallel_backend=vmap", f"train.device={DEVICE}", "train.steps=20"])
    assert sorted(train(with_vmap, tmp_path / "par")) == list(seeds)
    for s in seeds:
        alone = run_on(tmp_path, f"sep{s}", DEVICE, [*overrides, f"seed={s}"], steps=20)
        assert (tmp_path / "par" / f"seed_{s}" / "DONE").exists()
        assert_rows_within(read_jsonl(tmp_path / "par" / f"seed_{s}" / "metrics.jsonl"), alone)


def test_local_gpus_launcher_pins_one_job_per_gpu(tmp_path):
    """A real sweep through hydra/launcher=local_gpus with train.device=auto: each job sees one GPU id in
    CUDA_VISIBLE_DEVICES, trains on cuda, and the jobs of one GPU run one after another."""
    from nsrun.launch.local_pool import visible_gpus

    gpus = visible_gpus() if DEVICE == "cuda" else ["0", "1"]
    pin = [] if DEVICE == "cuda" else [f"hydra.launcher.gpus=[{','.join(gpus)}]", "train.device=cpu"]
    seeds = range(len(gpus) + 1)  # one GPU runs two jobs
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", *TINY, "train.steps=20", "train.eval_every=10", f"seed={','.join(map(str, seeds))}",
                   "hydra/launcher=local_gpus", *pin, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    jobs = [json.loads(line) for line in (sweep / "local_pool.jsonl").read_text().splitlines()]
    assert sorted(j["job"] for j in jobs) == list(seeds) and all(j["status"] == "COMPLETED" for j in jobs)
    assert {j["cuda_visible_devices"] for j in jobs} == set(gpus)
    by_gpu: dict[str, list] = {}
    for j in jobs:
        by_gpu.setdefault(j["cuda_visible_devices"], []).append((j["start"], j["end"]))
        assert devices_used(sweep / str(j["job"])) == [DEVICE]
    for intervals in by_gpu.values():
        intervals.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in zip(intervals, intervals[1:], strict=False))
