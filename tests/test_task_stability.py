"""The stability estimator, the stability logging and the regulariser on parity and WikiText-2."""

from __future__ import annotations

import math

import pytest
import torch

from nsrun.runner.config import build_model, build_task
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.train import train
from nsrun.science.stability.estimators import noise_stability
from tests.conftest import WIKITEXT2, compose_cfg, needs_wikitext2

COMMON = ["train.threads=1", "train.progress=none", "logger=none", "stability.n_examples=64",
          "stability.rhos=[0.5]", "stability.noises=[token]", "stability.splits=[val]"]
PARITY = ["task=parity", "task.n_bits=12", "task.n_train=200", "task.n_val=100", "model=tiny"]


@pytest.fixture(scope="module")
def wikitext_small(tmp_path_factory):
    """The first 150 lines of the real shared files, and a tokenizer cache of their own."""
    root = tmp_path_factory.mktemp("wt2")
    for name in ("valid.txt", "test.txt"):
        lines = (WIKITEXT2 / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (root / name).write_text("".join(lines[:150]), encoding="utf-8")
    return ["task=wikitext2", f"task.data_dir={root}", f"task.cache_dir={root / 'cache'}", "task.vocab_size=100",
            "task.context=16", "model=tiny"]


@pytest.fixture(params=["parity", pytest.param("wikitext2", marks=needs_wikitext2)])
def task_overrides(request):
    return PARITY if request.param == "parity" else request.getfixturevalue("wikitext_small")


def test_estimator_on_task_outputs(task_overrides):
    cfg = compose_cfg(task_overrides)
    task = build_task(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task).eval()

    def f(x):
        return task.output_probs(model(x))

    x = task.val.x[:64]
    gen = torch.Generator().manual_seed(0)
    full = noise_stability(f, x, 1.0, task.noise_tokens, task.resample_mask, generator=gen)
    half = noise_stability(f, x, 0.5, task.noise_tokens, task.resample_mask, generator=gen)
    assert full.normalised == pytest.approx(1.0, abs=1e-5)
    assert 0 < half.mean <= full.mean + 1e-6


def test_regulariser_and_stability_logging_run(task_overrides, tmp_path):
    cfg = compose_cfg([*task_overrides, *COMMON, "reg=stability", "reg.gamma=0.05", "reg.rho=0.05",
                       "train.steps=6", "train.eval_every=3", "train.batch_size=16"])
    train(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 3, 6]
    for key in ("stab_token_val_rho0.5", "nstab_token_val_rho0.5", "avgsens_val"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[-1]["reg_term"] < 0  # S = 1: the term rewards stability
