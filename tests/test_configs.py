"""Every config in conf/ composes and validates; bad input gives one line and exit 2."""

from __future__ import annotations

import pytest

from nsrun.runner.config import validate
from tests.conftest import CONF, SHARED, compose_cfg, run_cli

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra", "analysis"))


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# options that need more than their defaults to validate offline (wikitext2 defaults to the unreachable hub)
OPTION_OVERRIDES = {("task", "wikitext2"): [f"task.data_dir={SHARED / 'data' / 'wikitext-2'}"]}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose_cfg([f"{group}={option}", *OPTION_OVERRIDES.get((group, option), [])])
    validate(cfg)
    assert cfg[group].name == option


def test_default_is_nanda_modadd():
    cfg = compose_cfg()
    assert cfg.task.name == "modadd" and cfg.task.p == 113 and cfg.task.train_fraction == 0.3
    m = cfg.model
    assert (m.n_layers, m.d_model, m.n_heads, m.d_mlp, m.layer_norm) == (1, 128, 4, 512, False)
    assert cfg.optim.weight_decay == 1.0 and list(cfg.optim.betas) == [0.9, 0.98]


def test_reg_rho_parses_on_the_default():
    cfg = compose_cfg(["task=modadd", "reg.rho=0.9"])
    validate(cfg)
    assert cfg.reg.rho == 0.9


BAD = [
    (["task=nosuchtask"], "task=nosuchtask", "modadd"),
    (["model=huge"], "model=huge", "nanda"),
    (["task.p=100"], "task.p", "prime"),
    (["task.p=2"], "task.p", "prime"),
    (["task.train_fraction=1.0"], "task.train_fraction", "(0, 1)"),
    (["task.train_fraction=0"], "task.train_fraction", "(0, 1)"),
    (["task.operation=pow"], "task.operation", "add"),
    (["model.n_heads=3"], "model.n_heads", "divide"),
    (["train.steps=-10"], "train.steps", ">= 1"),
    (["train.steps=ten"], "train.steps", "integer"),
    (["optim.lr=-0.001"], "optim.lr", "number"),
    (["optim.betas=[0.9,1.5]"], "optim.betas", "[0, 1)"),
    (["reg.rho=1.5"], "reg.rho", "[0, 1]"),
    (["reg.rho=-0.1"], "reg.rho", "[0, 1]"),
    (["reg.gamma=-1"], "reg.gamma", "number"),
    (["train.device=tpu"], "train.device", "cpu"),
    (["train.nosuchkey=1"], "train.nosuchkey", "steps"),
    (["nosuchkey=1"], "nosuchkey", "train"),
    (["model.activation=tanh"], "model.activation", "relu"),
    (["eval.n_examples=0"], "eval.n_examples", ">= 1 or null"),
    (["stability.sensitivity_positions=0"], "stability.sensitivity_positions", ">= 1 or null"),
    (["task=wikitext2", "task.eval_examples=-5"], "task.eval_examples", ">= 1 or null"),
]


@pytest.mark.parametrize("overrides,key,allowed", BAD, ids=[b[1] + ":" + b[0][0] for b in BAD])
def test_bad_config_one_line_exit_2(tmp_path, overrides, key, allowed):
    run_dir = tmp_path / "run"
    res = run_cli([*overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert key in lines[0] and allowed in lines[0]
    assert not run_dir.exists()


def test_bad_job_in_a_sweep_is_caught_before_any_job_runs(tmp_path):
    res = run_cli(["-m", "task.p=23,25", "train.steps=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert res.returncode == 2
    assert "task.p" in res.stderr and "25" in res.stderr
    assert not (tmp_path / "sweep").exists()


def test_cfg_job_and_help_work_through_the_console_script(tmp_path):
    res = run_cli(["--cfg", "job", "task.p=97"], cwd=tmp_path)
    assert res.returncode == 0 and "p: 97" in res.stdout
    res = run_cli(["--help"], cwd=tmp_path)
    assert res.returncode == 0 and "task: " in res.stdout and "nsrun" in res.stdout
    res = run_cli(["--shell-completion", "install=bash"], cwd=tmp_path)
    assert res.returncode == 0 and "complete" in res.stdout
