"""train.parallel_seeds: K seeds in one process equal K separate runs (vmap on CPU here; the GPU path is the same
code), each in its own run directory, resumable; the rendezvous that batches the objectives' model calls."""

from __future__ import annotations

import math
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from nsrun.runner.rundir import read_jsonl
from nsrun.runner.seed_stack import Rendezvous
from nsrun.runner.train import train
from tests.conftest import TINY, compose_cfg, refusal

BASE = [*TINY, "train.eval_every=10", "logger=none", "stability.n_examples=64", "stability.rhos=[0.5]"]


def assert_rows_close(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for key, va in ra.items():
            if isinstance(va, float):
                assert math.isclose(va, rb[key], rel_tol=1e-4, abs_tol=1e-6), (ra["step"], key, va, rb[key])
            else:
                assert va == rb[key], (ra["step"], key)


def separate(tmp_path, overrides, seeds, steps):
    for s in seeds:
        train(compose_cfg([*BASE, *overrides, f"seed={s}", f"train.steps={steps}"]), tmp_path / f"sep{s}")
    return {s: read_jsonl(tmp_path / f"sep{s}" / "metrics.jsonl") for s in seeds}


@pytest.mark.parametrize("overrides", [
    ["reg=stability", "train.batch_size=64", "optim.grad_clip=0.5"],
    ["reg=stability", "reg.noise=gaussian", "reg.batch_fraction=0.5", "stability.enabled=false"],
    ["reg=grokfast", "stability.enabled=false"],
])
def test_vmapped_seeds_match_separate_runs(tmp_path, overrides):
    par = tmp_path / "par"
    rows = train(compose_cfg([*BASE, *overrides, "seed=3", "train.steps=20", "train.parallel_seeds=3",
                              "train.parallel_backend=vmap"]), par)
    assert sorted(rows) == [3, 4, 5]
    ref = separate(tmp_path, overrides, (3, 4, 5), 20)
    for s in (3, 4, 5):
        assert (par / f"seed_{s}" / "DONE").exists()
        assert_rows_close(read_jsonl(par / f"seed_{s}" / "metrics.jsonl"), ref[s])
    assert read_jsonl(par / "seed_3" / "metrics.jsonl")[-1]["val_loss"] != ref[4][-1]["val_loss"]


def test_vmapped_seeds_resume_and_catch_up(tmp_path):
    overrides = ["reg=stability", "train.batch_size=64", "stability.enabled=false", "train.checkpoint_every=10"]
    par = tmp_path / "par"
    cfg = [*BASE, *overrides, "seed=0", "train.parallel_seeds=2", "train.parallel_backend=vmap"]
    train(compose_cfg([*cfg, "train.steps=20"]), par)
    # seed 1 lost its checkpoint (as if the process died while writing them): it is retrained to step 20 alone
    shutil.rmtree(par / "seed_1" / "checkpoints")
    train(compose_cfg([*cfg, "train.steps=30"]), par)
    ref = separate(tmp_path, overrides, (0, 1), 30)
    for s in (0, 1):
        assert_rows_close(read_jsonl(par / f"seed_{s}" / "metrics.jsonl"), ref[s])


def test_loop_backend_is_k_separate_runs(tmp_path):
    train(compose_cfg([*BASE, "stability.enabled=false", "seed=1", "train.steps=10", "train.parallel_seeds=2",
                       "train.parallel_backend=loop"]), tmp_path / "par")
    ref = separate(tmp_path, ["stability.enabled=false"], (1, 2), 10)
    for s in (1, 2):
        assert [r["val_loss"] for r in read_jsonl(tmp_path / "par" / f"seed_{s}" / "metrics.jsonl")] == [
            r["val_loss"] for r in ref[s]]


def test_rendezvous_batches_calls_and_survives_uneven_call_counts():
    batches = []

    def run_batch(batch):
        batches.append(sorted(batch))
        return {k: args[0] * 10 for k, (args, _) in batch.items()}

    rendezvous = Rendezvous(run_batch)

    def objective(k):
        try:
            out = [rendezvous.call(k, (k,), {})]
            if k == 0:  # seed 0 calls the model a second time, alone
                out.append(rendezvous.call(k, (k + 1,), {}))
            return out
        finally:
            rendezvous.leave()

    rendezvous.start(3)
    with ThreadPoolExecutor(3) as pool:
        results = [f.result(timeout=10) for f in [pool.submit(objective, k) for k in range(3)]]
    assert results == [[0, 10], [10], [20]]
    assert batches == [[0, 1, 2], [0]]


def test_bad_parallel_seeds_is_one_line():
    assert refusal([*TINY, "train.parallel_seeds=0"]) == (
        "nsrun: error: train.parallel_seeds: must be an integer >= 1, got 0")
