"""Every config in conf/ composes and validates; bad input gives one line and exit 2; every override takes
effect or is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nsrun.runner.config import OPTIONS, field_names, validate
from tests.conftest import CONF, ROOT, compose_cfg, refusal, run_cli

GROUPS = sorted(p.name for p in CONF.iterdir()
                if p.is_dir() and p.name not in ("experiment", "hydra", "hparams_search"))  # test_optuna.py


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    validate(cfg)  # no I/O: task=wikitext2's hub and files are preflight's
    assert cfg[group].name == option
    if group in OPTIONS:  # an option has exactly its schema's keys
        assert list(cfg[group]) == field_names(OPTIONS[group][option])


def test_default_is_the_papers_regulariser_and_the_baseline_has_no_rho_or_gamma():
    reg = compose_cfg().reg
    assert (reg.name, reg.gamma, reg.rho, reg.S) == ("stability", 0.75, 0.25, 1)
    assert dict(compose_cfg(["reg=none"]).reg) == {"name": "none"}
    assert set(compose_cfg(["reg=grokfast"]).reg) == {"name", "alpha", "lamb"}
    assert dict(compose_cfg(["reg=weight_decay"]).reg) == {"name": "weight_decay"}
    parity = compose_cfg(["task=parity"]).reg  # the paper's parity values (conf/reg/for_task/)
    assert (parity.name, parity.gamma, parity.rho) == ("stability", 0.05, 0.05)


def test_default_is_nanda_modadd():
    cfg = compose_cfg()
    assert cfg.task.name == "modadd" and cfg.task.p == 113 and cfg.task.train_fraction == 0.3
    m = cfg.model
    assert (m.n_layers, m.d_model, m.n_heads, m.d_mlp, m.layer_norm) == (1, 128, 4, 512, False)
    assert cfg.optim.weight_decay == 1.0 and list(cfg.optim.betas) == [0.9, 0.98]


def test_reg_rho_parses_on_the_default():
    cfg = compose_cfg(["task=modadd", "reg.rho=0.9"])
    validate(cfg)
    assert cfg.reg.name == "stability" and cfg.reg.rho == 0.9


BAD = [
    (["task=nosuchtask"], "task=nosuchtask", "modadd"),
    (["model=huge"], "model=huge", "nanda"),
    (["task.p=100"], "task.p", "prime"),
    (["task.p=2"], "task.p", "prime"),
    (["task.train_fraction=1.0"], "task.train_fraction", "(0, 1)"),
    (["task.train_fraction=0"], "task.train_fraction", "(0, 1)"),
    (["task.operation=pow"], "task.operation", "add"),
    (["task.resample=equals"], "task.resample", "content, all"),
    (["noise=on_fit", "noise.train_acc=0"], "noise.train_acc", "(0, 1]"),
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
    (["task=wikitext2", "eval.n_examples=-5"], "eval.n_examples", ">= 1 or null"),
]


@pytest.mark.parametrize("overrides,key,allowed", BAD, ids=[b[1] + ":" + b[0][0] for b in BAD])
def test_bad_config_one_line_exit_2(overrides, key, allowed):
    line = refusal(overrides)  # the console script's check, in this process: exit 2, one line
    assert line.startswith("nsrun: error: ") and key in line and allowed in line


def test_the_console_script_refuses_in_one_line_without_traceback_and_creates_nothing(tmp_path):
    """The real process for one bad value: what the in-process refusals above stand for."""
    run_dir = tmp_path / "run"
    res = run_cli(["reg.rho=1.5", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("nsrun: error: reg.rho: ") and "[0, 1]" in lines[0]
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert list(tmp_path.iterdir()) == []  # neither the run dir nor outputs/


def test_bad_job_in_a_sweep_is_caught_before_any_job_runs():
    line = refusal(["-m", "task.p=23,25", "train.steps=2"])
    assert "task.p" in line and "25" in line


def test_cfg_job_and_help_work_through_the_console_script(tmp_path):
    res = run_cli(["--shell-completion", "install=bash"], cwd=tmp_path)
    assert res.returncode == 0 and "complete" in res.stdout


TINY_RUN = ["task.p=23", "task.train_fraction=0.5", "model=tiny", "train.threads=1", "train.progress=none",
            "optim.warmup_steps=0", "logger=none", "stability.enabled=false", "train.steps=2", "train.eval_every=2"]


def test_the_first_usage_line_trains_regularised_at_that_rho(tmp_path):
    from nsrun.commands.precheck import prevalidate
    from nsrun.runner.train import train

    usage = ["task=modadd", "reg.rho=0.9", *TINY_RUN]  # README's first usage line, made tiny
    prevalidate(usage)  # the console script's check, then its training (a console-script run: tests/test_rundir.py)
    train(compose_cfg(usage), tmp_path / "run")
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["reg_rho"] == 0.9 and last["reg_gamma"] == 0.75 and "reg_term" in last


REFUSED = [
    (["reg=none", "reg.rho=0.9"], "reg.rho has no effect with reg=none; choose reg=stability"),
    (["+reg.gamma=0.5", "reg=none"], "reg.gamma has no effect with reg=none; choose reg=stability"),
    (["reg=grokfast", "reg.rho=0.9"], "reg.rho has no effect with reg=grokfast; choose reg=stability"),
    (["reg=none", "noise=cosine"], "noise=cosine has no effect with reg=none; choose reg=stability"),
    (["noise.warmup_steps=10"], "noise.warmup_steps has no effect with noise=constant; choose noise=linear_warmup"),
    (["task.n_bits=10"], "task.n_bits has no effect with task=modadd; choose task=parity"),
    (["logger=none", "+logger.project=x"], "logger.project has no effect with logger=none; choose logger=wandb"),
    (["reg.sigma=0.5"], "reg.sigma has no effect with reg.noise=token; set reg.noise=gaussian"),
    (["+foo=bar"], "foo: unknown key; allowed keys at the top level: eval, experiment, logger, model, noise, optim, "
                   "reg, seed, stability, stop, task, train"),
    (["+train.step=500"], "train.step: unknown key (did you mean train.steps?); allowed keys under 'train': steps,"),
    (["train.step=500"], "train.step: unknown key (did you mean train.steps?)"),
    (["+experiment=parity_quick", "+experiment.titel=x"], "experiment.titel: unknown key; allowed keys there: name, "
                                                            "title,"),
    (["+experiment=map_modadd_tiny", "+experiment.map.titel=x"], "experiment.map.titel: unknown key"),
    (["+experiment=parity_quick", "experiment.figure=two"], "experiment.figure: must be an integer, got 'two'"),
    (["task=parity", "task.steps=7"], "task.steps: unknown key; allowed keys under 'task': name, n_bits,"),
]


@pytest.mark.parametrize("overrides,message", REFUSED, ids=[" ".join(r[0]) for r in REFUSED])
def test_an_override_without_effect_is_refused_in_one_line(overrides, message):
    assert refusal(overrides).startswith(f"nsrun: error: {message}")


def test_a_sweep_names_the_job_whose_override_has_no_effect():
    assert refusal(["-m", "reg=none,stability", "reg.rho=0.5"]) == (
        "nsrun: error: [job reg=none reg.rho=0.5] reg.rho has no effect with reg=none; choose reg=stability")


def test_cfg_job_shows_resolved_values(tmp_path):
    res = run_cli(["--cfg", "job", "task=parity", "task.n_bits=12"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "${" not in res.stdout and "  n_bits: 12\n" in res.stdout.split("\ntask:\n")[1]
    train = ("\n" + res.stdout).split("\ntrain:\n")[1]
    assert "  steps: 10000\n" in train and "  batch_size: 100\n" in train and "  eval_every: 250\n" in train


COMPOSED = [  # overrides -> the values they compose to: a task file sets train.*, the command line wins
    ([], {"train.steps": 20000, "train.batch_size": None, "stability.n_examples": 2048, "optim.lr": 1e-3}),
    (["task=parity"], {"train.steps": 10000, "train.batch_size": 100, "train.eval_every": 250,
                       "stability.n_examples": 256, "stability.sensitivity_positions": 4, "model.name": "parity",
                       "optim.lr": 3e-3, "reg.gamma": 0.05}),
    (["task=parity", "train.steps=7", "model=tiny", "optim.lr=0.01", "reg.gamma=0.5"],
     {"train.steps": 7, "train.batch_size": 100, "model.name": "tiny", "optim.lr": 0.01, "reg.gamma": 0.5}),
    (["task=parity", "reg=weight_decay"], {"optim.weight_decay": 3.0, "train.steps": 10000}),
    (["task=wikitext2"], {"train.steps": 5000, "eval.n_examples": 512, "stability.n_examples": 64}),
    (["+experiment=parity_n40"], {"train.steps": 6000, "train.eval_every": 50, "stability.n_examples": 500,
                                  "stability.sensitivity_positions": 4}),
    (["+experiment=modadd_quick"], {"train.steps": 8000, "stability.n_examples": None, "model.name": "small"}),
    (["+experiment=modadd_quick", "train.steps=9"], {"train.steps": 9}),
]


@pytest.mark.parametrize("overrides,values", COMPOSED, ids=[" ".join(c[0]) or "default" for c in COMPOSED])
def test_task_files_set_other_sections_and_the_command_line_wins(overrides, values):
    from omegaconf import OmegaConf

    cfg = compose_cfg(overrides)
    validate(cfg)
    assert {key: OmegaConf.select(cfg, key) for key in values} == values


def test_help_lists_nsruns_groups_and_the_keys_of_each_reg_option(tmp_path):
    res = run_cli(["--help"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for group in ("task", "model", "optim", "reg", "noise", "stop", "logger", "hydra/launcher", "hparams_search",
                  "+experiment"):
        assert any(ln.startswith(f"{group} ") and len(ln.split()) > 2 for ln in lines), group  # a description
    assert "analysis" not in res.stdout and "schema" not in res.stdout
    text = " ".join(ln.strip() for ln in lines)
    assert "stability (chosen): " in text and "keys: reg.rho reg.gamma reg.S reg.noise" in text
    assert "none: Plain cross-entropy: the baseline keys: none" in text
    assert "grokfast: " in text and "keys: reg.alpha reg.lamb" in text


@pytest.mark.parametrize("key,value,message", [
    ("train.steps", "ten", "train.steps: must be an integer, got 'ten'"),
    ("train.deterministic", "maybe", "train.deterministic: must be true or false, got 'maybe'"),
    ("stability.rhos", [0.5, "x"], "stability.rhos: must be a number, got 'x'"),
    ("stability.rhos", [0.5, 2.0], "stability.rhos: must be a non-empty list of numbers in [0, 1]"),
    ("stability.n_repeats", 0, "stability.n_repeats: must be an integer >= 1, got 0"),
])
def test_a_plain_config_is_typed_by_the_schema_like_a_composed_one(key, value, message):
    """A run directory's resolved config has no schema attached: section() types it as Hydra would."""
    from omegaconf import OmegaConf

    from nsrun.runner.config import section
    from nsrun.runner.errors import ConfigError

    plain = OmegaConf.create(OmegaConf.to_container(compose_cfg(), resolve=True))
    OmegaConf.update(plain, key, value)
    with pytest.raises(ConfigError) as refused:
        section(plain, key.split(".")[0])
    assert str(refused.value).startswith(message)


def test_runs_from_before_task_files_set_train_keys_still_match():
    """Earlier configs carried a task file's values of train.* as task.steps etc.: the same run."""
    from omegaconf import OmegaConf

    from nsrun.runner.science_key import science_config

    new = OmegaConf.to_container(compose_cfg(["task=parity"]), resolve=True)
    old = {**new, "task": {**new["task"], "batch_size": 100, "steps": 10000, "eval_every": 250,
                           "stability_examples": 256, "sensitivity_positions": 4}}
    assert science_config(old) == science_config(new)
    assert science_config(old) != science_config({**new, "train": {**new["train"], "batch_size": 50}})


def test_stability_settings_without_logging_do_not_change_the_science_key():
    from omegaconf import OmegaConf

    from nsrun.runner.science_key import science_config

    off = OmegaConf.to_container(compose_cfg(["stability.enabled=false"]), resolve=True)
    other = {**off, "stability": {**off["stability"], "rhos": [0.5], "sensitivity": False}}
    assert science_config(off) == science_config(other)
    on = {**other, "stability": {**other["stability"], "enabled": True}}
    assert science_config(on) != science_config({**on, "stability": {**on["stability"], "rhos": [0.9]}})


@pytest.mark.parametrize("overrides", [[], ["reg=none", "task=parity"]])
def test_help_is_hydras_help_text(tmp_path, overrides):
    """nsrun prints --help itself (without Hydra's group listings, which its template does not use): the same
    text as Hydra's own --help."""
    hydras = ("import sys; from nsrun.commands.nsrun import hydra_entry; "
              f"sys.argv = ['nsrun', '--help', *{overrides!r}]; hydra_entry()")
    outs = [subprocess.run([sys.executable, "-c", hydras], cwd=ROOT, capture_output=True, text=True, timeout=120),
            run_cli(["--help", *overrides], cwd=tmp_path)]
    assert outs[0].returncode == outs[1].returncode == 0, outs[1].stderr
    assert "== Config groups" in outs[1].stdout and outs[0].stdout == outs[1].stdout


def test_the_sweep_plan_is_hydras_basic_sweeper_order():
    """The jobs nsrun validates (and names when a sweep stops) are the basic sweeper's, in its order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nsrun.commands.precheck import _sweep_jobs

    params = {"reg": "none,stability", "seed": "0,1,2"}
    overrides = ["seed=3,4", "task.p=23,29", "reg.S=1"]
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + overrides)
    hydras = [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    assert _sweep_jobs(overrides, params) == hydras and len(hydras) == 2 * 2 * 2


def test_runs_from_before_task_resample_count_as_content_and_only_modadd_runs_gain_it():
    from omegaconf import OmegaConf

    from nsrun.runner.science_key import science_config

    new = OmegaConf.to_container(compose_cfg(), resolve=True)
    old = {**new, "task": {k: v for k, v in new["task"].items() if k != "resample"}}
    assert science_config(old) == science_config(new)
    assert science_config(old) != science_config({**new, "task": {**new["task"], "resample": "all"}})
    for task in ("parity", "wikitext2"):
        assert "resample" not in science_config(compose_cfg([f"task={task}"]))["task"]
