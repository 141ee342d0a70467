"""Noisy k-sparse parity: labels, label noise, seeds, fresh validation, learnability, bad input."""

from __future__ import annotations

import pytest
import torch

from nsrun.runner.config import build_task, validate
from nsrun.runner.errors import ConfigError
from nsrun.runner.train import train
from nsrun.science.tasks.parity import READOUT
from tests.conftest import compose_cfg, refusal


def parity_task(*overrides):
    cfg = compose_cfg(["task=parity", *overrides])
    validate(cfg)
    return build_task(cfg)


def xor_of(x, subset):
    """The XOR of the bits in ``subset``, computed bit by bit."""
    out = torch.zeros(len(x), dtype=torch.long)
    for i in subset.tolist():
        out ^= x[:, i]
    return out


def test_clean_labels_are_the_xor_of_the_chosen_bits():
    task = parity_task("task.label_noise=0", "task.n_bits=30", "task.k=4")
    assert len(task.subset) == 4 and len(set(task.subset.tolist())) == 4
    for split in (task.train, task.val):
        assert split.x.shape[1] == 31 and (split.x[:, -1] == READOUT).all()
        assert set(split.x[:, :-1].unique().tolist()) == {0, 1}
        assert torch.equal(split.y, xor_of(split.x, task.subset))


def test_label_noise_flips_the_asked_fraction_of_training_labels_only():
    task = parity_task("task.label_noise=0.1", "task.n_train=1000")
    clean = xor_of(task.train.x, task.subset)
    assert torch.equal(task.train_clean_y, clean)
    assert (task.train.y != clean).sum().item() == 100
    assert torch.equal(task.train.y != clean, task.flipped)
    assert torch.equal(task.val.y, xor_of(task.val.x, task.subset))


def test_subset_seed_fixes_the_subset_and_data_seed_the_data():
    a = parity_task("task.subset_seed=1")
    b = parity_task("task.subset_seed=1", "task.data_seed=5")
    c = parity_task("task.subset_seed=2")
    assert torch.equal(a.subset, b.subset) and not torch.equal(a.subset, c.subset)
    assert not torch.equal(a.train.x, b.train.x)
    assert torch.equal(a.train.x, c.train.x)


@pytest.mark.parametrize("n_bits", [10, 100])
def test_interface_for_small_and_large_n(n_bits):
    task = parity_task(f"task.n_bits={n_bits}", "task.n_train=500", "task.n_val=200")
    assert task.vocab_size == 3 and task.n_outputs == 2 and task.seq_len == n_bits + 1
    assert task.resample_mask.tolist() == [True] * n_bits + [False]
    assert task.noise_tokens.tolist() == [0, 1]
    if n_bits == 10:  # small n: training and validation inputs do not overlap
        train_rows = {tuple(r) for r in task.train.x.tolist()}
        assert len(train_rows) == 500 and not train_rows & {tuple(r) for r in task.val.x.tolist()}


def test_fresh_validation_set_is_new_at_each_eval_and_reproducible():
    task = parity_task("task.val_set=fresh", "task.n_val=300")
    v1, v2, v1_again = task.val_split(100), task.val_split(200), task.val_split(100)
    assert not torch.equal(v1.x, v2.x) and torch.equal(v1.x, v1_again.x)
    assert torch.equal(v2.y, xor_of(v2.x, task.subset)) and len(v2.x) == 300
    fixed = parity_task()
    assert fixed.val_split(100) is fixed.val


def test_small_instance_is_learned(tmp_path):
    cfg = compose_cfg(["task=parity", "task.n_bits=10", "task.k=2", "task.n_train=400", "task.n_val=400",
                       "model=tiny", "model.init_std=0.2", "optim.lr=3e-3", "optim.weight_decay=0.1",
                       "train.batch_size=100", "train.steps=300", "train.eval_every=300", "train.threads=1",
                       "train.progress=none", "stability.enabled=false", "logger=none", "reg=none"])
    last = train(cfg, tmp_path)
    assert last["val_acc"] >= 0.95


def test_k_larger_than_n_one_line_exit_2():
    assert refusal(["task=parity", "task.k=41"]) == "nsrun: error: task.k: must be <= task.n_bits=40, got 41"


@pytest.mark.parametrize("overrides,message", [
    (["task.label_noise=0.5"], "task.label_noise: must be a number in [0, 0.5), got 0.5"),
    (["task.n_bits=8", "task.n_train=250"], "task.n_train: n_train + n_val must be <= 2^n_bits = 256"),
    (["task.val_set=sometimes"], "task.val_set: must be one of fixed, fresh"),
])
def test_bad_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(["task=parity", *overrides]))
    assert str(e.value).startswith(message)
