"""The stability regulariser, the noise schedules, stability logging in training, and their bad input."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from nsrun.runner.config import build_model, build_objective, build_schedule, build_task, validate
from nsrun.runner.errors import ConfigError
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.train import train
from nsrun.science.objective import CrossEntropy
from nsrun.science.stability.noise import token_noise
from tests.conftest import TINY, compose_cfg, refusal


def setup(*overrides):
    cfg = compose_cfg([*TINY, "reg=stability", *overrides])
    validate(cfg)
    task = build_task(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    return cfg, task, model


def loss_grad(overrides, task, model):
    """Gradient of the objective's loss at step 0 and the regulariser term's value."""
    objective = build_objective(compose_cfg([*TINY, "reg=stability", *overrides]), task)
    model.zero_grad()
    loss, stats = objective(model, task.train.x, task.train.y, 0)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone(), stats["reg_term"].item()


@pytest.mark.parametrize("noise", ["token", "gaussian"])
def test_regulariser_gradient_is_nonzero_and_flips_with_s(noise):
    _, task, model = setup()
    g_ce, term = loss_grad(["reg.gamma=0.0", f"reg.noise={noise}"], task, model)
    g1, term1 = loss_grad(["reg.gamma=1.0", "reg.S=1", f"reg.noise={noise}"], task, model)
    g0, term0 = loss_grad(["reg.gamma=1.0", "reg.S=0", f"reg.noise={noise}"], task, model)
    assert term == 0 and term1 < 0 < term0 and term1 == pytest.approx(-term0)
    assert (g1 - g_ce).norm() > 1e-3 * g_ce.norm()
    torch.testing.assert_close(g1 - g_ce, -(g0 - g_ce), rtol=1e-4, atol=1e-7)


def test_gamma_zero_gives_the_baseline_loss():
    cfg, task, model = setup("reg.gamma=0.0")
    loss, stats = build_objective(cfg, task)(model, task.train.x, task.train.y, 0)
    assert torch.equal(loss, stats["ce"] + 0.0) and stats["reg_term"].item() == 0.0
    baseline, _ = CrossEntropy(task)(model, task.train.x, task.train.y, 0)
    torch.testing.assert_close(loss, baseline, rtol=1e-6, atol=1e-7)


def test_stop_grad_clean_changes_the_gradient_and_batch_fraction_sizes_the_noisy_copy():
    _, task, model = setup()
    g_full, _ = loss_grad(["reg.gamma=1.0"], task, model)
    g_stop, _ = loss_grad(["reg.gamma=1.0", "reg.stop_grad_clean=true"], task, model)
    assert not torch.allclose(g_full, g_stop)
    sizes = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: sizes.append(len(args[0])), with_kwargs=True)
    cfg_f = compose_cfg([*TINY, "reg=stability", "reg.batch_fraction=0.25"])
    for reuse_equal_rows in (False, True):  # True (the default): only noisy rows that are no clean row run
        objective = build_objective(cfg_f, task)
        objective.reuse_equal_rows = reuse_equal_rows
        objective(model, task.train.x, task.train.y, 0)
    handle.remove()
    n = len(task.train.x)
    assert sizes[0] == n + math.ceil(0.25 * n) and n < sizes[1] < sizes[0]


def test_regulariser_state_round_trip_reproduces_the_next_step():
    cfg, task, model = setup()
    a = build_objective(cfg, task)
    a(model, task.train.x, task.train.y, 0)
    state = a.state_dict()
    loss_a, _ = a(model, task.train.x, task.train.y, 1)
    b = build_objective(cfg, task)
    b.load_state_dict(state)
    loss_b, _ = b(model, task.train.x, task.train.y, 1)
    assert torch.equal(loss_a, loss_b)
    assert a.log_stats() == b.log_stats() and a.log_stats() == {}


SCHEDULES = [
    # (overrides, step -> (rho, gamma)) with reg.rho = 0.2, reg.gamma = 0.8, train.steps = 100
    (["noise=constant"], {0: (0.2, 0.8), 50: (0.2, 0.8), 100: (0.2, 0.8)}),
    (["noise=linear_warmup", "noise.warmup_steps=100"], {0: (1.0, 0.0), 50: (0.6, 0.4), 100: (0.2, 0.8)}),
    (["noise=cosine"], {0: (0.2, 0.8), 50: (0.6, 0.4), 100: (1.0, 0.0)}),
    (["noise=step", "noise.milestones=[50]", "noise.rho_values=[0.5]", "noise.gamma_values=[0.0]"],
     {0: (0.2, 0.8), 49: (0.2, 0.8), 50: (0.5, 0.0), 100: (0.5, 0.0)}),
    (["noise=step", "noise.milestones=[30,60]", "noise.gamma_values=[0.4,0.1]"],
     {0: (0.2, 0.8), 45: (0.2, 0.4), 100: (0.2, 0.1)}),
    (["noise=on_fit"], {0: (0.2, 0.0), 100: (0.2, 0.0)}),  # not fitted (on_since None): off
]


def test_on_fit_schedule_after_the_switch_ramps_gamma_and_keeps_rho():
    base = [*TINY, "reg=stability", "reg.rho=0.2", "reg.gamma=0.8", "noise=on_fit"]
    at_once = build_schedule(compose_cfg(base))
    assert [at_once(s, on_since=10) for s in (9, 10, 500)] == [(0.2, 0.0), (0.2, 0.8), (0.2, 0.8)]
    ramp = build_schedule(compose_cfg([*base, "noise.ramp_steps=4"]))
    assert [ramp(s, on_since=10)[1] for s in (9, 10, 11, 13, 14)] == pytest.approx([0, 0.2, 0.4, 0.8, 0.8])
    assert ramp.fit_level == 1.0 and build_schedule(compose_cfg([*base, "noise=constant"])).fit_level is None


@pytest.mark.parametrize("overrides,expected", SCHEDULES)
def test_schedules_give_the_documented_values(overrides, expected):
    cfg = compose_cfg([*TINY, "reg=stability", "reg.rho=0.2", "reg.gamma=0.8", "train.steps=100", *overrides])
    validate(cfg)
    schedule = build_schedule(cfg)
    for step, (rho, gamma) in expected.items():
        assert schedule(step) == pytest.approx((rho, gamma)), step


BAD = [
    (["reg.rho=1.5"], "reg.rho"),
    (["reg.gamma=-0.5"], "reg.gamma"),
    (["reg.S=2"], "reg.S"),
    (["reg.noise=uniform"], "reg.noise"),
    (["reg.batch_fraction=0"], "reg.batch_fraction"),
    (["noise=linear_warmup", "noise.rho_start=2"], "noise.rho_start"),
    (["noise=step", "noise.milestones=[50,10]"], "noise.milestones"),
    (["noise=step", "noise.gamma_values=[1,2]"], "noise.gamma_values"),
    (["noise=on_fit", "noise.train_acc=0"], "noise.train_acc"),
    (["noise=on_fit", "noise.train_acc=1.5"], "noise.train_acc"),
    (["noise=on_fit", "noise.ramp_steps=-1"], "noise.ramp_steps"),
    (["task.resample=operands"], "task.resample"),
    (["stability.rhos=[0.5,1.5]"], "stability.rhos"),
    (["stability.noises=[token,uniform]"], "stability.noises"),
    (["stability.n_examples=0"], "stability.n_examples"),
]


@pytest.mark.parametrize("overrides,key", BAD)
def test_bad_values_are_config_errors(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg([*TINY, "reg=stability", *overrides]))
    assert e.value.key == key


@pytest.mark.parametrize("args,needle", [
    (["reg=stability", "reg.rho=1.5"], "reg.rho"),
    (["reg=stability", "reg.noise=uniform"], "reg.noise"),
    (["noise=nosuch"], "noise=nosuch"),
    (["reg=stability", "reg.gamma=-1"], "reg.gamma"),
])
def test_bad_input_exits_2_with_one_line(args, needle):
    assert needle in refusal([*TINY, *args])  # exit 2, one line (the console script: tests/test_configs.py)


def test_regularised_run_logs_the_stability_curve_and_resumes_identically(tmp_path):
    args = [*TINY, "reg=stability", "reg.gamma=0.75", "reg.rho=0.25", "train.eval_every=10",
            "stability.n_examples=64", "stability.per_layer=true"]
    train(compose_cfg([*args, "train.steps=30"]), tmp_path / "full")
    rows = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    for key in ("val_loss", "val_acc", "stab_token_val_rho0.25", "nstab_token_val_rho0.25",
                "stab_gaussian_train_rho0.9", "stab_token_val_rho0.25_se", "avgsens_val", "avgsens_train",
                "hstab_token_val_rho0.5_l1"):
        assert all(key in r for r in rows), key
    assert "reg_term" not in rows[0] and all(r["reg_term"] < 0 and r["reg_gamma"] == 0.75 for r in rows[1:])
    assert all(0 < r["nstab_token_val_rho0.25"] <= 1.01 for r in rows)
    train(compose_cfg([*args, "train.steps=20"]), tmp_path / "ext")
    train(compose_cfg([*args, "train.steps=30"]), tmp_path / "ext")
    assert (tmp_path / "ext" / "metrics.jsonl").read_bytes() == (tmp_path / "full" / "metrics.jsonl").read_bytes()


def test_theory_command_writes_tables_and_plots(tmp_path, capsys):
    from nsrun.commands.theory import main as theory

    out = tmp_path / "theory"
    theory(["model=tiny", "task.p=23", "--rhos", "0.5,1", "--n-examples", "64", "--n-repeats", "1",
            "--mc-samples", "20000", "--depth", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "Interval propagation" in printed and "closed form" in printed
    for name in ("relu.csv", "recurrence.csv", "attention.csv", "intervals.csv", "theory.png", "intervals.png"):
        assert (out / name).stat().st_size > 0, name
    for argv, says in ((["--rhos", "0.5,2"], "--rhos"), (["--run", str(tmp_path / "nope")], "not a run directory")):
        with pytest.raises(SystemExit) as exited:
            theory(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exited.value.code == 2 and len(err) == 1 and says in err[0], err


# -- task.resample (modadd): '=' resampled too, from the whole input vocabulary ---------------------------------

@contextlib.contextmanager
def model_inputs(model):
    """The token inputs ``[N, T]`` of every forward pass of ``model`` inside the block (a list)."""
    seen = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(args[0].clone()) if args else None, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def test_resample_all_redraws_the_equals_sign_and_can_draw_it():
    p = 23
    content, every = (build_task(compose_cfg([*TINY, *o])) for o in ([], ["task.resample=all"]))
    assert content.resample_mask.tolist() == [True, True, False] and content.noise_tokens.tolist() == list(range(p))
    assert every.resample_mask.tolist() == [True, True, True] and every.noise_tokens.tolist() == list(range(p + 1))
    assert torch.equal(every.train.x, content.train.x) and torch.equal(every.val.y, content.val.y)
    x = every.train.x
    y = token_noise(x, 0.0, every.noise_tokens, every.resample_mask, torch.Generator().manual_seed(0))
    assert (y[:, 2] != p).any() and (y[:, :2] == p).any()  # '=' redrawn; an operand replaced by '='
    y = token_noise(x, 0.0, content.noise_tokens, content.resample_mask, torch.Generator().manual_seed(0))
    assert (y[:, 2] == p).all() and (y[:, :2] != p).all()


@pytest.mark.parametrize("resample,changed", [("content", False), ("all", True)])
def test_resample_reaches_the_regulariser_and_the_monitor(resample, changed):
    from nsrun.science.stability.monitor import MonitorSettings, stability_metrics

    cfg, task, model = setup(f"task.resample={resample}", "reg.rho=0.0")
    p, x, y = task.p, task.train.x, task.train.y
    with model_inputs(model) as inputs:
        build_objective(cfg, task)(model, x, y, 0)
    assert bool((inputs[0][len(x):, 2] != p).any()) == changed
    for settings in (MonitorSettings(rhos=(0.0,), noises=("token",), sensitivity=False, n_examples=64),
                     MonitorSettings(rhos=(0.0,), noises=("gaussian",), sensitivity=True, n_examples=64)):
        with model_inputs(model) as inputs:
            stability_metrics(model, task, settings, seed=0, step=0)
        assert bool(any((t[:, 2] != p).any() for t in inputs)) == changed, settings


# -- noise=on_fit: off (no noisy pass) until the training batch is fitted, then on for good ----------------------

def clean_acc(model, task, x, y) -> float:
    with torch.no_grad():
        return float(task.correct(model(x), y)) / len(y)


def test_on_fit_adds_nothing_before_the_fit_switches_at_the_first_fitted_step_and_stays_on():
    _, task, model = setup()
    x, y = task.train.x, task.train.y
    level = (int(clean_acc(model, task, x, y) * len(y)) + 3) / len(y)  # three more correct than at init
    objective = build_objective(compose_cfg([*TINY, "reg=stability", "noise=on_fit", f"noise.train_acc={level}"]),
                                task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    noise_state = objective.generator.get_state()
    for step in range(300):
        fitted = clean_acc(model, task, x, y) >= level
        with model_inputs(model) as calls:
            loss, stats = objective(model, x, y, step)
        if not fitted:
            assert objective.on_since is None and len(calls) == 1 and stats["reg_term"].item() == 0
            assert torch.equal(loss, CrossEntropy(task)(model, x, y, step)[0]) and stats["reg_gamma"] == 0
            assert torch.equal(objective.generator.get_state(), noise_state)  # no noise drawn
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if fitted:
            break
    assert objective.on_since == step > 0 and len(calls) == 2 and stats["reg_gamma"] == 0.75
    assert stats["reg_term"].item() < 0 and torch.equal(calls[0], x)
    assert 0 < len(calls[1]) < len(x)  # the noisy rows that are no clean row (tests/test_cost.py)
    row = objective.log_stats()
    assert row["reg_on_since"] == step and row["reg_term"] < 0 and "reg_stab" in row
    assert row["reg_term"] == pytest.approx(stats["reg_term"].item() / (step + 1))  # zeros before the switch
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    _, stats = objective(model, x, shuffled, step + 1)  # no longer fitted: stays on
    assert objective.on_since == step and stats["reg_term"].item() < 0


ON_FIT = [*TINY, "optim.lr=1e-2", "reg=stability", "noise=on_fit", "noise.train_acc=0.2", "train.eval_every=10",
          "stability.enabled=false"]  # seed 0 switches at step 54 of 80


def test_on_fit_run_logs_the_switch_and_resumes_identically(tmp_path):
    train(compose_cfg([*ON_FIT, "train.steps=80"]), tmp_path / "full")
    rows = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    on = [r for r in rows if "reg_on_since" in r]
    assert on and len(on) < len(rows) - 1, "the switch should fall inside the run"
    since = on[0]["reg_on_since"]
    assert 0 < since <= on[0]["step"] and all(r["reg_on_since"] == since for r in on)
    assert all(r["reg_term"] == 0 and r["reg_gamma"] == 0 and "reg_stab" not in r for r in rows[1:] if r not in on)
    assert all(r["reg_gamma"] == 0.75 for r in on)
    train(compose_cfg([*ON_FIT, f"train.steps={on[0]['step'] + 10}"]), tmp_path / "ext")  # stop after the switch
    train(compose_cfg([*ON_FIT, "train.steps=80"]), tmp_path / "ext")
    assert (tmp_path / "ext" / "metrics.jsonl").read_bytes() == (tmp_path / "full" / "metrics.jsonl").read_bytes()


def test_on_fit_with_vmapped_seeds_matches_separate_runs(tmp_path):
    from tests.test_parallel_seeds import assert_rows_close

    train(compose_cfg([*ON_FIT, "seed=0", "train.steps=80", "train.parallel_seeds=2", "train.parallel_backend=vmap"]),
          tmp_path / "par")
    switched = set()
    for s in (0, 1):
        train(compose_cfg([*ON_FIT, f"seed={s}", "train.steps=80"]), tmp_path / f"sep{s}")
        rows = read_jsonl(tmp_path / "par" / f"seed_{s}" / "metrics.jsonl")
        assert_rows_close(rows, read_jsonl(tmp_path / f"sep{s}" / "metrics.jsonl"))
        switched.add(rows[-1]["reg_on_since"])
    assert len(switched) == 2  # one seed ran on while the other was still off (seeds 0, 1: steps 54, 63)
