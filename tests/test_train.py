"""Real training runs on CPU: fitting, determinism, atomic checkpoints and exact resumption."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time

import pytest
import torch

from nsrun.runner import checkpoint
from nsrun.runner.errors import UsageError
from nsrun.runner.replicas import batch_indices
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.train import train
from tests.conftest import TINY, compose_cfg


def test_tiny_modadd_fits_training_set(tmp_path):
    cfg = compose_cfg([*TINY, "train.steps=400", "train.eval_every=100", "optim.lr=1e-2",
                       "optim.weight_decay=0.1"])
    last = train(cfg, tmp_path)
    assert last["step"] == 400
    assert last["train_acc"] == 1.0
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 100, 200, 300, 400]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 10
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "resolved_config.yaml").exists()


def test_same_seed_identical_metrics_different_seed_differs(tmp_path):
    def run(name, seed):
        cfg = compose_cfg([*TINY, "train.steps=60", "train.eval_every=20", f"seed={seed}", "train.batch_size=64"])
        train(cfg, tmp_path / name)
        return (tmp_path / name / "metrics.jsonl").read_bytes()

    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    assert a == b
    assert a != c


def test_minibatches_cover_each_epoch_once():
    seen = torch.cat([batch_indices(100, 10, seed=3, step=s) for s in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    assert batch_indices(100, None, 0, 5) is None
    assert not torch.equal(batch_indices(100, 10, 3, 0), batch_indices(100, 10, 3, 10))


def test_checkpoint_loads_with_weights_only(tmp_path):
    cfg = compose_cfg([*TINY, "train.steps=10", "train.eval_every=5"])
    train(cfg, tmp_path)
    ckpt = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 10 and "model" in ckpt and "optimizer" in ckpt and "rng" in ckpt
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_rerun_of_a_finished_run_changes_nothing(tmp_path):
    cfg = compose_cfg([*TINY, "train.steps=20", "train.eval_every=10"])
    train(cfg, tmp_path)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    mtime = (tmp_path / "checkpoints" / "last.pt").stat().st_mtime_ns
    train(cfg, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
    assert (tmp_path / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime


def test_extending_a_finished_run_continues_it(tmp_path):
    full = tmp_path / "full"
    train(compose_cfg([*TINY, "train.steps=40", "train.eval_every=10"]), full)
    ext = tmp_path / "ext"
    train(compose_cfg([*TINY, "train.steps=20", "train.eval_every=10"]), ext)
    train(compose_cfg([*TINY, "train.steps=40", "train.eval_every=10"]), ext)
    assert (ext / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()


def test_different_config_in_same_run_dir_is_refused(tmp_path):
    train(compose_cfg([*TINY, "train.steps=10", "train.eval_every=5"]), tmp_path)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(UsageError, match="task.p"):
        train(compose_cfg([*TINY, "task.p=29", "train.steps=10", "train.eval_every=5"]), tmp_path)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before  # the console script: tests/test_rundir.py


# regularised, with stability logging: long enough (a few seconds) to be interrupted after its first checkpoint
SLOW_ENOUGH = ["task.p=23", "task.train_fraction=0.5", "model=small", "train.threads=1", "train.progress=log",
               "logger=none", "train.steps=300", "train.eval_every=50", "train.checkpoint_every=50",
               "stability.n_examples=64"]


def _wait_for_checkpoint(run_dir, proc, timeout=120):
    ckpt = run_dir / "checkpoints" / "last.pt"
    t0 = time.time()
    while not ckpt.exists():
        assert proc.poll() is None, "run finished before its first checkpoint"
        assert time.time() - t0 < timeout
        time.sleep(0.01)


def _popen(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "nsrun.commands.nsrun", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """SLOW_ENOUGH trained to the end without interruption (in this process): its metrics.jsonl."""
    ref = tmp_path_factory.mktemp("ref")
    train(compose_cfg(SLOW_ENOUGH), ref)
    return (ref / "metrics.jsonl").read_text()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_resumes_to_identical_metrics(tmp_path, sig, uninterrupted, caplog):
    run = tmp_path / "run"
    proc = _popen([*SLOW_ENOUGH, f"hydra.run.dir={run}"], cwd=tmp_path)
    _wait_for_checkpoint(run, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    step = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
    assert 0 < step < 300
    if sig == signal.SIGTERM:
        assert "checkpoint written" in out
    with caplog.at_level(logging.INFO):
        train(compose_cfg(SLOW_ENOUGH), run)
    assert f"resuming {run} from step {step}" in caplog.text
    assert (run / "metrics.jsonl").read_text() == uninterrupted
    steps = [json.loads(line)["step"] for line in (run / "timing.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_run_dir_made_before_a_key_was_added_still_resumes(tmp_path):
    """A saved config that lacks a key added later (ADDED_KEYS) counts as having the value that reproduces the
    old behaviour: the run dir resumes; a saved config of another value is still refused."""
    from omegaconf import OmegaConf

    from nsrun.runner.rundir import CONFIG_FILE as RESOLVED_CONFIG

    cfg = compose_cfg([*TINY, "train.steps=10", "train.eval_every=5"])
    train(cfg, tmp_path)
    saved = tmp_path / RESOLVED_CONFIG
    old = OmegaConf.load(saved)
    del old.eval["n_examples"], old.stability["sensitivity_positions"]
    saved.write_text(OmegaConf.to_yaml(old))
    before = (tmp_path / "metrics.jsonl").read_bytes()
    train(compose_cfg([*TINY, "train.steps=15", "train.eval_every=5"]), tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert (tmp_path / "metrics.jsonl").read_bytes().startswith(before) and rows[-1]["step"] == 15
    with pytest.raises(UsageError, match="eval.n_examples"):
        train(compose_cfg([*TINY, "train.steps=20", "train.eval_every=5", "eval.n_examples=100"]), tmp_path)


def test_eval_subset_is_one_fixed_set_for_every_run():
    from nsrun.runner.evaluation import eval_subset
    from nsrun.science.tasks.base import Split

    split = Split(torch.arange(1000).view(500, 2), torch.arange(500))
    x, y = eval_subset(split, 100, 1)
    assert len(x) == 100 and torch.equal(x[:, 0] // 2, y) and torch.equal(eval_subset(split, 100, 1)[1], y)
    assert not torch.equal(eval_subset(split, 100, 0)[1], y)
    assert eval_subset(split, None, 1)[1] is split.y and eval_subset(split, 500, 1)[1] is split.y
