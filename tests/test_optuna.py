"""conf/hparams_search/: an Optuna search (hydra-optuna-sweeper) through the console script. The search space is
validated before any trial runs; a real tiny search finishes and writes Optuna's result; a rerun skips its runs
and continues the search."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nsrun.runner.config import validate
from nsrun.runner.train import run_objective
from tests.conftest import CONF, compose_cfg, refusal, run_cli

SEARCH = ["-m", "hparams_search=modadd_optuna"]


def test_the_search_composes_to_the_quick_modadd_regime():
    cfg = compose_cfg(["hparams_search=modadd_optuna"])
    validate(cfg)
    assert (cfg.task.p, cfg.task.train_fraction, cfg.model.name, cfg.model.init_std) == (31, 0.6, "small", 0.2)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.train.steps, cfg.train.batch_size) == (1e-3, 0, 12000, None)
    assert (cfg.reg.name, cfg.stop.name, cfg.stop.level, cfg.stop.patience, cfg.stop.unreached_penalty) == (
        "stability", "onset", 0.95, 3000, 3000)  # the map's horizon and stop rule
    the_map = compose_cfg(["+experiment=map_modadd_quick"])
    for key in ("task", "model", "optim", "train.steps", "train.eval_every", "stop.patience"):  # composed, not restated
        assert OmegaConf.select(cfg, key) == OmegaConf.select(the_map, key), key
    assert not cfg.stability.enabled
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose("config", overrides=["hparams_search=modadd_optuna"], return_hydra_config=True).hydra
    sweeper = hydra_cfg.sweeper
    assert "optuna" in sweeper._target_ and "LocalPoolLauncher" in hydra_cfg.launcher._target_
    assert (sweeper.n_trials, sweeper.n_jobs, sweeper.sampler.seed, sweeper.direction) == (30, 2, 0, "minimize")
    assert "TPESampler" in sweeper.sampler._target_
    assert dict(sweeper.params) == {"reg.S": "choice(0, 1)", "reg.gamma": "tag(log, interval(0.01, 4))",
                                    "reg.rho": "interval(0.05, 0.95)",
                                    "noise": "choice(constant, linear_warmup, cosine, on_fit)"}


@pytest.mark.parametrize("overrides,message", [
    (["reg.rho=interval(0.05,1.5)"],
     "[job reg.rho=1.5 hparams_search=modadd_optuna] reg.rho: must be a number in [0, 1], got 1.5"),
    (["reg.gamma=tag(log,interval(0,4))"],
     "reg.gamma: an Optuna interval needs 0 < start < end (a log interval), got interval(0.0, 4.0)"),
    (["reg.rho=interval(0.9,0.1)"], "reg.rho: an Optuna interval needs start < end, got interval(0.9, 0.1)"),
    (["noise=choice(constant,nosuch)"], "noise=nosuch: unknown option for config group 'noise'; allowed: "),
    (["reg.rhoo=interval(0.1,0.2)"], "reg.rhoo: unknown key (did you mean reg.rho?)"),
    (["reg.rho=1.5"], "[job hparams_search=modadd_optuna reg.rho=1.5] reg.rho: must be a number in [0, 1], got 1.5"),
], ids=["endpoint out of range", "log from 0", "start > end", "unknown option", "unknown key", "fixed replaces"])
def test_a_bad_search_space_is_refused_in_one_line(overrides, message):
    assert message in refusal([*SEARCH, *overrides])


def test_a_bad_search_space_exits_2_before_anything_is_created(tmp_path):
    res = run_cli([*SEARCH, "reg.rho=interval(0.05,1.5)", f"hydra.sweep.dir={tmp_path / 'search'}"], cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == (
        "nsrun: error: [job reg.rho=1.5 hparams_search=modadd_optuna] reg.rho: must be a number in [0, 1], got 1.5")
    assert not (tmp_path / "search").exists() and not (tmp_path / "multirun").exists()


def tiny_search(tmp_path, n_trials: int):
    """A real search of ``n_trials`` on the tiny model (stop once train_acc >= 0.5 held 20 steps): its sweep dir."""
    search = tmp_path / "search"
    res = run_cli([*SEARCH, "model=tiny", "task.p=23", "train.steps=300", "train.eval_every=20",
                   "stop.metric=train_acc", "stop.level=0.5", "stop.patience=20", "stability.enabled=false",
                   "train.threads=1",
                   "train.progress=none", f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweep.dir={search}",
                   "hydra/launcher=basic"], cwd=tmp_path)  # trials in this process (the pool: test_parallel_launcher)
    assert res.returncode == 0, res.stderr
    return search


def trial_objectives(search) -> list[float]:
    trials = sorted((d for d in search.iterdir() if d.is_dir()), key=lambda d: int(d.name))
    return [run_objective(OmegaConf.load(d / "resolved_config.yaml"), d) for d in trials]


def test_a_tiny_search_finishes_and_writes_the_best_value(tmp_path):
    search = tiny_search(tmp_path, n_trials=2)
    result = OmegaConf.load(search / "optimization_results.yaml")
    assert set(result.best_params) == {"reg.S", "reg.gamma", "reg.rho", "noise"}
    assert sorted(d.name for d in search.iterdir() if d.is_dir()) == ["0", "1"]
    objectives = trial_objectives(search)
    assert result.best_value == min(objectives) < 300 + 2000, objectives
    best = OmegaConf.load(search / str(objectives.index(min(objectives))) / "resolved_config.yaml")
    assert (best.reg.rho, best.reg.gamma, best.reg.S, best.noise.name) == tuple(
        result.best_params[k] for k in ("reg.rho", "reg.gamma", "reg.S", "noise"))


@pytest.mark.slow
def test_a_rerun_with_more_trials_skips_the_finished_ones_and_continues(tmp_path):
    search = tiny_search(tmp_path, n_trials=3)
    trials = [search / str(n) for n in range(3)]

    def written():
        return {d: ((d / "metrics.jsonl").read_bytes(), (d / "metrics.jsonl").stat().st_mtime_ns) for d in trials}

    before = written()
    tiny_search(tmp_path, n_trials=4)  # TPE is seeded: the same 3 trials (finished, not trained again), then one more
    assert written() == before and (search / "3" / "DONE").exists()
    assert OmegaConf.load(search / "optimization_results.yaml").best_value == min(trial_objectives(search))


PEERS = {"baseline": ("none", None, None), "grokfast": ("grokfast", None, None),
         "token_s1": ("stability", 1, "token"), "token_s0": ("stability", 0, "token"),
         "gaussian_s1": ("stability", 1, "gaussian"), "gaussian_s0": ("stability", 0, "gaussian")}


@pytest.mark.parametrize("method", PEERS)
def test_every_method_s_search_has_the_same_budget_regime_and_seeds(method):
    """The equal-budget searches (conf/hparams_search/peers_*.yaml): one per method, 24 trials of seeds 0-1 in the
    map's regime, each searching its own knobs and weight decay."""
    name = f"hparams_search=peers_{method}"
    cfg = compose_cfg([name])
    validate(cfg)
    the_map = compose_cfg(["+experiment=map_modadd_quick"])
    for key in ("task", "model", "train.steps", "train.eval_every", "stop.patience", "stop.level"):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(the_map, key), key
    assert (cfg.seed, cfg.train.parallel_seeds, cfg.stop.unreached_penalty, cfg.stability.enabled) == (0, 2, 3000,
                                                                                                      False)
    reg, S, noise = PEERS[method]
    assert cfg.reg.name == reg and (S is None or (cfg.reg.S, cfg.reg.noise) == (S, noise))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sweeper = compose("config", overrides=[name], return_hydra_config=True).hydra.sweeper
    assert (sweeper.n_trials, sweeper.n_jobs, sweeper.sampler.seed, sweeper.study_name) == (24, 2, 0, f"peers_{method}")
    space = set(sweeper.params)
    assert "optim.weight_decay" in space
    assert space - {"optim.weight_decay"} == {"baseline": {"optim.lr"}, "grokfast": {"reg.alpha", "reg.lamb"}}.get(
        method, {"reg.gamma", "reg.rho", "noise"})


def test_a_tiny_two_seed_search_scores_each_trial_by_its_seeds_mean(tmp_path):
    search = tmp_path / "search"
    res = run_cli(["-m", "hparams_search=peers_token_s0", "model=tiny", "task.p=23", "train.steps=120",
                   "train.eval_every=20", "stop.metric=train_acc", "stop.level=0.5", "stop.patience=20",
                   "train.threads=1", "train.progress=none", "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={search}",
                   "hydra/launcher=basic"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (search / "0").glob("seed_*")) == ["seed_0", "seed_1"]
    per_seed = [run_objective(OmegaConf.load(search / "0" / s / "resolved_config.yaml"), search / "0" / s)
                for s in ("seed_0", "seed_1")]
    assert OmegaConf.load(search / "optimization_results.yaml").best_value == sum(per_seed) / 2
