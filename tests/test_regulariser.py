"""The stability regulariser, the noise schedules, stability logging in training, and their bad input."""

from __future__ import annotations

import math

import pytest
import torch

from nsrun.runner.config import build_model, build_objective, build_schedule, build_task, validate
from nsrun.runner.errors import ConfigError
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.train import train
from nsrun.science.objective import CrossEntropy
from tests.conftest import TINY, compose_cfg, run_cli


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
    build_objective(cfg_f, task)(model, task.train.x, task.train.y, 0)
    handle.remove()
    n = len(task.train.x)
    assert sizes == [n + math.ceil(0.25 * n)]


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
]


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
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
    res = run_cli([*TINY, *args, f"hydra.run.dir={tmp_path / 'run'}"])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


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


def test_theory_command_writes_tables_and_plots(tmp_path):
    out = tmp_path / "theory"
    res = run_cli(["model=tiny", "task.p=23", "--rhos", "0.5,1", "--n-examples", "64", "--n-repeats", "1",
                   "--mc-samples", "20000", "--depth", "3", "--out", str(out)], script="nsrun.commands.theory")
    assert res.returncode == 0, res.stderr
    assert "Interval propagation" in res.stdout and "closed form" in res.stdout
    for name in ("relu.csv", "recurrence.csv", "attention.csv", "intervals.csv", "theory.png", "intervals.png"):
        assert (out / name).stat().st_size > 0, name
    bad = run_cli(["--rhos", "0.5,2"], script="nsrun.commands.theory")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--rhos" in bad.stderr
    missing = run_cli(["--run", str(tmp_path / "nope")], script="nsrun.commands.theory")
    assert missing.returncode == 2 and "not a run directory" in missing.stderr and "Traceback" not in missing.stderr
