"""The regulariser's cost savings: noisy rows whose input is a clean row of the batch are not run again (exact),
the term on every k-th step only (an option), and gamma = 0 as the baseline (the dose control)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from nsrun.runner.config import build_model, build_objective, build_task, validate
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.science_key import science_config
from nsrun.runner.train import train
from nsrun.science.objective import CrossEntropy
from nsrun.science.stability.noise import token_noise
from nsrun.science.stability.regulariser import (
    MATCH_ACROSS_INPUTS_PER_ROW,
    NOISE_SEED_OFFSET,
    noisy_rows_to_run,
    own_rows_to_run,
)
from tests.conftest import TINY, compose_cfg, refusal

PARITY = ["task=parity", "task.n_bits=8", "task.n_train=64", "task.n_val=64", "model=tiny"]
TASKS = {"modadd": TINY, "parity": [*PARITY, *(o for o in TINY if not o.startswith(("task.", "model=")))]}
TASKS["parity_14"] = [*TASKS["parity"], "task.n_bits=14"]  # 2^14 inputs: each noisy row against its own row only
BATCH = 8  # rows of the training batch in the gradient comparisons


def setup(task_name: str, *overrides):
    cfg = compose_cfg([*TASKS[task_name], "reg=stability", "reg.gamma=1.0", *overrides])
    validate(cfg)
    task = build_task(cfg)
    torch.manual_seed(0)
    return cfg, task, build_model(cfg, task)


def input_dependent(model):
    """``model`` with weights of std 0.3 (at init, std 0.02, its outputs hardly depend on the input, so the
    output of a wrong row would pass for the right one)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model


@contextlib.contextmanager
def model_rows(model):
    """The number of input rows of every forward pass of ``model`` inside the block (a list)."""
    rows = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: rows.append(len(args[0])), with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


def step(objective, model, x, y, generator_state, reuse_equal_rows: bool):
    """Loss, every parameter's gradient, the generator's state after the step and the rows the model ran."""
    objective.reuse_equal_rows = reuse_equal_rows
    objective.generator.set_state(generator_state)
    model.zero_grad(set_to_none=True)
    with model_rows(model) as rows:
        loss, _ = objective(model, x, y, 0)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return loss.detach(), grads, objective.generator.get_state(), rows


def changed(noisy: torch.Tensor, clean: torch.Tensor) -> int:
    """How many rows of ``noisy`` differ from their own clean rows."""
    return int((noisy != clean).reshape(len(clean), -1).any(1).sum())


def draw_with(objective, model, x, pattern: str, rho: float) -> torch.Tensor:
    """A generator state whose noise draw changes ``pattern`` of the noised rows: none, some or all (searched
    over generator seeds)."""
    for seed in range(20_000):
        state = torch.Generator().manual_seed(seed).get_state()
        objective.generator.set_state(state)
        subset, noisy = objective._draw(model, x, rho)
        n_changed = changed(noisy, x if subset is None else x[subset])
        if (pattern, n_changed) in (("none changed", 0), ("all changed", len(noisy))) or (
                pattern == "some changed" and 0 < n_changed < len(noisy)):
            return state
    raise AssertionError(f"no draw with {pattern}")


CASES = [(t, s, pattern, []) for t in TASKS for s in (0, 1) for pattern in ("none changed", "some changed",
                                                                               "all changed")]
CASES += [("modadd", 1, "some changed", ["reg.stop_grad_clean=true"]),
          ("parity", 0, "some changed", ["reg.stop_grad_clean=true"]),
          ("modadd", 0, "some changed", ["reg.batch_fraction=0.5"]),
          ("parity", 1, "some changed", ["reg.batch_fraction=0.5", "reg.stop_grad_clean=true"]),
          ("modadd", 1, "some changed", ["noise=on_fit"]),
          ("parity", 0, "all changed", ["noise=on_fit", "reg.stop_grad_clean=true"]),
          ("parity_14", 1, "some changed", ["reg.batch_fraction=0.5", "reg.stop_grad_clean=true"]),
          ("parity_14", 0, "some changed", ["noise=on_fit"]),
          ("modadd", 0, "whole training set", ["reg.stop_grad_clean=true"]),
          ("modadd", 1, "whole training set", ["noise=on_fit", "reg.batch_fraction=0.5"])]
RHO = {"none changed": 0.9, "some changed": 0.5, "all changed": 0.0, "whole training set": 0.0}


@pytest.mark.parametrize("task_name,S,pattern,overrides", CASES)
def test_reusing_equal_rows_gives_the_two_pass_loss_and_gradients(task_name, S, pattern, overrides):
    rho = RHO[pattern]
    cfg, task, model = setup(task_name, f"reg.S={S}", f"reg.rho={rho}", *overrides)
    model = input_dependent(model)
    objective = build_objective(cfg, task)
    if "noise=on_fit" in overrides:
        objective.on_since = 0  # switched on (as restored from a checkpoint taken after the switch)
    if pattern == "whole training set":  # many noisy rows equal other training rows (p 23, half of all pairs)
        x, y, state = task.train.x, task.train.y, objective.generator.get_state()
    else:
        x, y = task.train.x[:BATCH], task.train.y[:BATCH]
        state = draw_with(objective, model, x, pattern, rho)
    reachable = len(task.noise_tokens) ** int(task.resample_mask.sum())
    assert (reachable <= MATCH_ACROSS_INPUTS_PER_ROW * len(x)) == (task_name != "parity_14")  # rows matched across
    loss_two, grads_two, after_two, rows_two = step(objective, model, x, y, state, reuse_equal_rows=False)
    loss_one, grads_one, after_one, rows_one = step(objective, model, x, y, state, reuse_equal_rows=True)
    torch.testing.assert_close(loss_one, loss_two, rtol=1e-6, atol=1e-7)
    assert grads_one.keys() == grads_two.keys() and sum(g.norm() for g in grads_two.values()) > 0
    for name, g in grads_two.items():  # float rounding: within 1e-5 of the largest entry
        torch.testing.assert_close(grads_one[name], g, rtol=1e-5, atol=1e-5 * float(g.abs().max()), msg=name)
    assert torch.equal(after_one, after_two)  # the same generator calls
    objective.generator.set_state(state)
    subset, noisy = objective._draw(model, x, rho)
    n_changed, ran = changed(noisy, x if subset is None else x[subset]), sum(rows_one) - len(x)
    assert sum(rows_two) - len(x) == len(noisy)
    if pattern == "none changed":
        assert ran == 0
    elif pattern == "whole training set":
        assert 0 < ran < n_changed  # changed rows that are other training rows did not run
    else:
        assert 0 < ran <= n_changed


def test_rows_are_not_compared_where_hardly_any_is_expected_unchanged():
    """Parity at 20 bits and rho 0: a row is unchanged with probability 0.75^20 = 0.3 % (< 1 %): every noisy
    row runs, also an unchanged one."""
    cfg, task, model = setup("parity", "task.n_bits=20", "reg.rho=0.0")
    objective = build_objective(cfg, task)
    x, y = task.train.x[:BATCH], task.train.y[:BATCH]
    state = draw_with(objective, model, x, "some changed", 0.0)
    _, _, _, rows = step(objective, model, x, y, state, reuse_equal_rows=True)
    assert rows == [2 * BATCH]


def test_the_noise_is_the_stream_of_earlier_versions():
    """The noisy rows are token_noise(x, rho) from a generator seeded with seed + 7919 (as before the saving);
    only those whose input is no clean row run."""
    cfg, task, model = setup("modadd", "reg.rho=0.5", "seed=4")
    x, y = task.train.x, task.train.y
    expected = token_noise(x, 0.5, task.noise_tokens, task.resample_mask,
                           torch.Generator().manual_seed(4 + NOISE_SEED_OFFSET))
    known = (expected[:, None] == x[None]).all(-1).any(1)  # the noisy rows equal to some training row
    assert 0 < int(known.sum()) < len(x)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].clone()), with_kwargs=True)
    for reuse_equal_rows in (False, True):
        objective = build_objective(cfg, task)
        objective.reuse_equal_rows = reuse_equal_rows
        objective(model, x, y, 0)
    handle.remove()
    assert torch.equal(seen[0][len(x):], expected) and torch.equal(seen[0][:len(x)], x)
    assert torch.equal(seen[1][:len(x)], x)
    fresh = list(dict.fromkeys(tuple(r) for r in expected[~known].tolist()))  # distinct, in order
    assert [tuple(r) for r in seen[1][len(x):].tolist()] == fresh


def test_noisy_rows_to_run_matches_clean_rows_and_duplicates():
    clean = torch.tensor([[1, 2], [3, 4], [5, 6]])
    noisy = torch.tensor([[1, 2], [3, 4], [9, 9], [9, 9], [5, 7], [3, 4]])
    run, source = noisy_rows_to_run(clean, noisy)
    assert run.tolist() == [2, 4] and source.tolist() == [0, 1, 3, 3, 4, 1]
    assert torch.equal(torch.cat([clean, noisy[run]])[source], noisy)


def test_own_rows_to_run_compares_each_noisy_row_with_its_own_row_only():
    clean = torch.tensor([[1, 2], [3, 4], [5, 6]])
    noisy = torch.tensor([[5, 6], [9, 9], [1, 2]])
    run, source = own_rows_to_run(clean, noisy, torch.tensor([2, 0, 1]))  # the noisy copy of rows 2, 0, 1
    assert run.tolist() == [1, 2] and source.tolist() == [2, 3, 4]  # [1, 2] is row 0's input, not row 1's
    assert torch.equal(torch.cat([clean, noisy[run]])[source], noisy)


def test_noisy_rows_to_run_checks_every_match_token_by_token():
    """Rows of 65 bits: the code (base 2, wrapping at 2^64) of [1, 0, ..., 0] equals that of the zero row."""
    zero = torch.zeros(1, 65, dtype=torch.long)
    one = zero.clone()
    one[0, 0] = 1
    noisy = torch.cat([one, zero, one])
    run, source = noisy_rows_to_run(zero, noisy)
    assert run.tolist() == [0, 2] and source.tolist() == [1, 0, 2]  # a colliding row runs (each time)
    assert torch.equal(torch.cat([zero, noisy[run]])[source], noisy)
    x = torch.randint(0, 500, (40, 64), generator=torch.Generator().manual_seed(0))  # sequences (WikiText-2-like)
    noisy = torch.cat([x[:10], x[5:15].flip(0), torch.randint(0, 500, (10, 64))])
    noisy[12, 63] = (noisy[12, 63] + 1) % 500  # one position of a sequence changed: it runs
    run, source = noisy_rows_to_run(x, noisy)
    assert torch.equal(torch.cat([x, noisy[run]])[source], noisy)
    assert len(run) == 11 and 12 in run.tolist()


def test_vmapped_seeds_with_different_row_counts_get_their_own_outputs():
    from nsrun.runner.seed_stack import SeedStack

    cfg, task, _ = setup("modadd")
    models = []
    for s in (0, 1):
        torch.manual_seed(s)
        models.append(build_model(cfg, task))
    stack = SeedStack(models)
    x = task.train.x[:10]
    out = stack._run_batch({0: ((x[:7],), {}), 1: ((x[:3],), {})})
    assert out[0].shape[0] == 7 and out[1].shape[0] == 3
    for k, n in ((0, 7), (1, 3)):
        stack.copy_to(models[k], k)
        torch.testing.assert_close(out[k], models[k](x[:n]), rtol=1e-5, atol=1e-6)


# -- reg.every_k_steps ---------------------------------------------------------------------------------------

def test_every_k_steps_adds_the_term_on_every_kth_step_only():
    cfg, task, model = setup("modadd", "reg.every_k_steps=3", "reg.rho=0.5")
    objective = build_objective(cfg, task)
    x, y = task.train.x, task.train.y
    terms = []
    for s in range(7):
        state = objective.generator.get_state()
        with model_rows(model) as rows:
            loss, stats = objective(model, x, y, s)
        on = s % 3 == 0
        assert (sum(rows) > len(x)) == on and ("reg_stab" in stats) == on, s
        assert torch.equal(objective.generator.get_state(), state) != on, s  # no noise drawn off the k-th steps
        if not on:
            assert torch.equal(loss, CrossEntropy(task)(model, x, y, s)[0]) and stats["reg_term"].item() == 0
        terms.append(stats["reg_term"].item())
    assert all(t < 0 for t in terms[::3])
    row = objective.log_stats()
    assert row["reg_term"] == pytest.approx(sum(terms) / 7)  # the term is not rescaled by k


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "two"])
def test_every_k_steps_must_be_an_integer_of_at_least_one(value):
    line = refusal(["reg=stability", f"reg.every_k_steps={value}"])
    assert line.startswith("nsrun: error: reg.every_k_steps: must be an integer")


def test_every_k_steps_has_no_effect_without_the_regulariser():
    line = refusal(["reg=none", "reg.every_k_steps=2"])
    assert line == "nsrun: error: reg.every_k_steps has no effect with reg=none; choose reg=stability"


def test_runs_made_before_every_k_steps_count_as_k_1():
    cfg = compose_cfg([*TINY, "reg=stability"])
    new = science_config(cfg)
    old = science_config(cfg)
    del old["reg"]["every_k_steps"]
    assert science_config(old) == new
    assert science_config(compose_cfg([*TINY, "reg=stability", "reg.every_k_steps=2"])) != new


# -- gamma = 0: the dose control -----------------------------------------------------------------------------

def test_gamma_zero_runs_the_clean_pass_alone_and_draws_the_same_noise():
    cfg, task, model = setup("modadd", "reg.gamma=0")
    zero = build_objective(cfg, task)
    positive = build_objective(compose_cfg([*TINY, "reg=stability"]), task)
    x, y = task.train.x, task.train.y
    with model_rows(model) as rows:
        loss, stats = zero(model, x, y, 0)
    positive(model, x, y, 0)
    assert rows == [len(x)] and torch.equal(loss, CrossEntropy(task)(model, x, y, 0)[0])
    assert stats["reg_term"].item() == 0 and "reg_stab" not in stats
    assert torch.equal(zero.generator.get_state(), positive.generator.get_state())


# p = 47: with the old concatenated pass at gamma = 0 the metrics differed from reg=none's after a few steps
DOSE = [*TINY, "task.p=47", "train.steps=10", "train.eval_every=5", "stability.n_examples=32",
        "stability.rhos=[0.5]"]


@pytest.mark.parametrize("overrides", [[], ["train.batch_size=64", "reg.S=0", "reg.stop_grad_clean=true"]])
def test_gamma_zero_reproduces_the_baseline_run_exactly(tmp_path, overrides):
    train(compose_cfg([*DOSE, *overrides[:1], "reg=none"]), tmp_path / "none")
    train(compose_cfg([*DOSE, "reg=stability", "reg.gamma=0", *overrides]), tmp_path / "gamma0")
    base, dosed = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("none", "gamma0"))
    assert [r["step"] for r in base] == [r["step"] for r in dosed] == [0, 5, 10]
    for a, b in zip(base, dosed, strict=True):
        assert set(b) - set(a) <= {"reg_term", "reg_rho", "reg_gamma"}
        assert a == {k: b[k] for k in a}  # every metric of the baseline, exactly
    assert all(r["reg_term"] == 0 for r in dosed[1:])
    params = [torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True)["model"]
              for d in ("none", "gamma0")]
    assert params[0].keys() == params[1].keys()
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])
