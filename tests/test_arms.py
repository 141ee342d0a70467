"""An experiment's arms and targets (nsrun/analysis/arms.py) on hand-made run dirs: WikiText-2's target from
the baseline's runs, read at the first eval that reaches it; arms told apart by reg.S and reg.rho; claim 2's
lag per parity size."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import pytest
import yaml

from nsrun.analysis import claims
from nsrun.analysis.arms import baseline_best
from nsrun.analysis.experiments import load_experiments
from nsrun.analysis.reproduction import load_experiment, reproduce_figures
from nsrun.commands.reproduce import run_sweeps, sweep_commands
from tests.conftest import CONF, WIKITEXT2, needs_wikitext2

STAB = "stab_token_val_rho0.25"


@cache
def full_experiments() -> dict:
    return load_experiments(CONF, False)


def write_curve_run(path: Path, config: dict, rows: list[dict], seconds_per_step: float = 0.01) -> None:
    """A finished run dir with ``config`` and the metrics ``rows`` (each with its ``step``)."""
    path.mkdir(parents=True)
    (path / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    timing = [{"step": r["step"], "train_seconds": r["step"] * seconds_per_step} for r in rows]
    (path / "timing.jsonl").write_text("".join(json.dumps(t) + "\n" for t in timing))
    (path / "DONE").write_text("")


def lm_config(seed: int, reg: dict) -> dict:
    return {"seed": seed, "task": {"name": "wikitext2", "vocab_size": 500}, "reg": reg, "train": {"steps": 1000}}


def overfitting_curve(best_step: int, best: float, stab_end: float, steps: int = 1000, every: int = 25) -> list[dict]:
    """val_loss falls linearly from 6.0 to ``best`` at ``best_step`` and rises after it (overfitting);
    stability goes linearly from 0.05 to ``stab_end``."""
    rows = []
    for step in range(0, steps + 1, every):
        if step <= best_step:
            loss = 6.0 - (6.0 - best) * step / best_step
        else:
            loss = best + 0.002 * (step - best_step)
        rows.append({"step": step, "val_loss": loss, STAB: 0.05 + (stab_end - 0.05) * step / steps})
    return rows


REG = {"S1_rho25": {"name": "stability", "S": 1, "rho": 0.25, "gamma": 0.75},
       "S0_rho25": {"name": "stability", "S": 0, "rho": 0.25, "gamma": 0.75}}


@pytest.fixture
def lm_runs(tmp_path):
    """Baseline seeds at their best (4.20-4.28) at step 600 and overfitting after, their stability falling to
    0.02; S 1 reaches a lower loss at step 300 and keeps its stability; S 0 gets to 4.5 at step 700."""
    bests = [4.20, 4.22, 4.24, 4.26, 4.28]
    for seed, best in enumerate(bests):
        write_curve_run(tmp_path / f"reg=none,seed={seed}", lm_config(seed, {"name": "none"}),
                        overfitting_curve(600, best, 0.02))
        write_curve_run(tmp_path / f"reg=stability,reg.S=1,reg.rho=0.25,seed={seed}",
                        lm_config(seed, REG["S1_rho25"]), overfitting_curve(300, best - 0.2, 0.06), 0.02)
        write_curve_run(tmp_path / f"reg=stability,reg.S=0,reg.rho=0.25,seed={seed}",
                        lm_config(seed, REG["S0_rho25"]), overfitting_curve(700, 4.5, 0.01), 0.02)
    return tmp_path


def test_wikitext2_target_comes_from_the_baseline_and_is_read_at_the_first_eval_that_reaches_it(lm_runs):
    exp = full_experiments()["wikitext2"]
    assert exp.onset_level is None and exp.baseline_factors == (1.0, 1.05) and exp.onset_reach == "first"
    er = load_experiment(exp, lm_runs, n_boot=500)
    assert [er.reg(g) for g in er.groups] == ["none", "S1_rho25", "S0_rho25"]  # arms in the experiment's order
    assert [len(g.runs) for g in er.groups] == [5, 5, 5] and not er.config_notes
    # the best val_loss every baseline seed reaches: the worst seed's minimum, 4.28
    assert baseline_best(er.group("none").runs, "val_loss") == pytest.approx(4.28)
    assert [t.rule.level for t in er.targets] == pytest.approx([4.28, 1.05 * 4.28])
    rows = {}
    for target in er.targets:
        er.use(target)
        rows[target.rule.level] = {r["reg"]: r for r in claims.onset_rows(er)}
    best, loose = rows[er.targets[0].rule.level], rows[er.targets[1].rule.level]
    # every baseline seed reaches 4.28 (the worst one at its best, step 600) although all overfit after it
    assert best["none"]["n_not_reached"] == 0 and best["none"]["onset_ci_high"] == 600
    assert best["S1_rho25"]["onset_median"] == 275  # the regularised arm passes 4.28 on its way to its best
    assert best["S1_rho25"]["verdict"] == "reproduced" and best["S1_rho25"]["fewer_ci_low"] > 0
    assert best["S0_rho25"]["verdict"] == "" and best["S0_rho25"]["n_not_reached"] == 5  # a control: no verdict
    assert loose["none"]["onset_median"] < best["none"]["onset_median"]  # 1.05x the best comes earlier
    assert best["S1_rho25"]["onset"] == "first val_loss <= 4.28 (baseline best)"
    assert loose["S1_rho25"]["onset"] == "first val_loss <= 4.494 (1.05x baseline best)"


def test_claim_3_is_read_for_each_regulariser_arm_against_the_baseline(lm_runs):
    er = load_experiment(full_experiments()["wikitext2"], lm_runs, n_boot=500)
    made = claims.run_claims(er)
    stability = [c for c in made if c["claim"] == 3]
    assert len(stability) == 1  # one regulariser arm has runs here (S 1, rho 0.25); S 0 is a control
    assert stability[0]["verdict"] == "reproduced"
    assert "S 1, rho 0.25 0.060 vs baseline 0.020" in stability[0]["measured"]
    assert {c["claim"] for c in made} == {3, 4}


def test_runs_no_arm_selects_form_groups_of_their_reg_option(lm_runs):
    cfg = lm_config(0, {"name": "stability", "S": 1, "rho": 0.5, "gamma": 0.75})
    write_curve_run(lm_runs / "reg=stability,reg.rho=0.5,seed=0", cfg, overfitting_curve(500, 4.3, 0.05))
    er = load_experiment(full_experiments()["wikitext2"], lm_runs, n_boot=200)
    assert [er.reg(g) for g in er.groups] == ["none", "S1_rho25", "S0_rho25", "stability"]
    assert er.label(er.group("stability")) == er.group("stability").label  # not styled as an arm


def parity_curve(onset: int, stab_fall: int, steps: int = 2000, every: int = 50) -> list[dict]:
    """Validation accuracy 0.5 until ``onset``, then 1.0; stability 0.6 until ``stab_fall``, then 0.5."""
    return [{"step": s, "val_acc": 1.0 if s >= onset else 0.5, "val_loss": 0.05 if s >= onset else 0.69,
             "stab_token_val_rho0.05": 0.5 if s >= stab_fall else 0.6} for s in range(0, steps + 1, every)]


def test_claim_2_lag_is_measured_per_parity_size(tmp_path):
    """n = 10: the stability falls 100 steps before validation accuracy rises, in every seed; n = 40: 200
    steps after it. The lag of each size is its own claim-2 row, with its own interval."""
    lags = {"parity_n10": -100, "parity_n40": 200}
    for name, lag in lags.items():
        for seed in range(5):
            onset = 600 + 100 * seed
            for reg, arm in (({"name": "none"}, "none"), ({"name": "stability", "S": 1, "rho": 0.05}, "S1")):
                config = {"seed": seed, "task": {"name": "parity", "n_bits": int(name[8:])}, "reg": reg,
                          "train": {"steps": 2000}}
                write_curve_run(tmp_path / name / f"{arm},seed={seed}", config, parity_curve(onset, onset + lag))
    exps = {name: full_experiments()[name] for name in lags}
    for name, lag in lags.items():  # the steepest fall of the smoothed stability ends one eval early at most
        er = load_experiment(exps[name], tmp_path / name, n_boot=200)
        measured = [r.onsets.lag_steps for g in er.groups for r in g.runs]
        assert len(measured) == 10 and all(lag - 50 <= x <= lag for x in measured)
    result = reproduce_figures(exps, tmp_path / "out", CONF, tmp_path, None, None, n_boot=500)
    by = {c["experiment"]: c for c in result.claims if c["claim"] == 2}
    assert set(by) == set(lags)
    assert by["parity_n10"]["verdict"] == "reproduced" and "(n = 10)" in by["parity_n10"]["measured"]
    assert by["parity_n40"]["verdict"] == "not reproduced"
    rows = [r for r in result.rows if r["reg"] == "S1"]  # claim 1 per size: same onsets, no fewer steps
    assert {r["experiment"] for r in rows} == set(lags) and {r["verdict"] for r in rows} == {"not reproduced"}
    assert all(math.isclose(r["fewer_steps"], 0.0) for r in rows)


def test_an_experiment_with_sweeps_runs_one_nsrun_per_entry_and_each_arm_gets_its_runs(tmp_path):
    """parity_n10's two sweeps (reg=none; reg=stability reg.S=1,0) at 2 steps: a run dir per arm, read back
    into the arms none, S1 and S0."""
    exp = full_experiments()["parity_n10"]
    commands = sweep_commands(exp, None, ["seed=0"], tmp_path, None)
    assert [c[c.index("+experiment=parity_n10") + 2:] for c in commands] == [
        ["reg=none", "seed=0"], ["reg=stability", "reg.S=1,0", "seed=0"]]
    tiny = ["train.steps=2", "train.eval_every=1", "train.progress=none", "stability.n_examples=32", "seed=0"]
    assert run_sweeps({"parity_n10": exp}, None, tiny, tmp_path) == 0
    dirs = sorted(p.parent.name for p in (tmp_path / "parity_n10").glob("*/DONE"))
    assert [d.split(",stability")[0] for d in dirs] == ["reg.S=0,reg=stability,seed=0",
                                                        "reg.S=1,reg=stability,seed=0", "reg=none,seed=0"]
    er = load_experiment(exp, tmp_path / "parity_n10", n_boot=100)
    assert {er.reg(g): len(g.runs) for g in er.groups} == {"none": 1, "S1": 1, "S0": 1}


@needs_wikitext2
def test_the_wikitext2_sweeps_write_their_text_subset_first(tmp_path):
    exp = full_experiments()["wikitext2"]
    commands = sweep_commands(exp, "basic", [], tmp_path, None)
    data = tmp_path / "data" / "wikitext-2"
    assert len(commands) == 2 and all(f"task.data_dir={data}" in c for c in commands)
    assert commands[1][-3:] == ["reg=stability", "reg.S=1,0", "reg.rho=0.25,0.75,0.9"]
    lines = (WIKITEXT2 / "valid.txt").read_text().splitlines(keepends=True)
    assert (data / "valid.txt").read_text() == "".join(lines[:exp.text_subset["train_lines"]])
