"""The map: its configs compose into valid jobs, the report from hand-made run dirs (cells, best cell,
verdicts, heatmaps, the patience check, stopped runs at a stricter level), and the tiny map end to end through
the real command (its sweeps, the best cell read from its grid, rerun skips finished runs)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from functools import cache

import pytest
from omegaconf import OmegaConf

from nsrun.analysis.map_report import heatmap_panels, markdown_table, step_cost_ratio, write_map_report
from nsrun.analysis.maps import (
    Arm,
    best_cell,
    cell_overrides,
    cell_verdict,
    grid_cell,
    load_map,
    load_map_runs,
    optuna_trials_by_sign,
    override_text,
    patience_check,
)
from nsrun.runner.config import validate
from tests.conftest import CONF, ROOT, compose_cfg

MAPS = ("map_modadd_quick", "map_modadd_second", "map_modadd_gaussian", "map_modadd_tiny", "walltime_modadd_quick",
        "walltime_modadd_quick_confirm", "walltime_modadd_second")


def one_value_each(overrides: list[str]) -> list[list[str]]:
    """Jobs of a sweep that together take every value of every swept key once (the others at their first; the
    seed only at its first: it changes nothing in the composition)."""
    split = [o.partition("=") for o in overrides]
    values = [(k, v.split(",")[:1] if k == "seed" else v.split(",")) for k, _, v in split]
    first = [f"{k}={vs[0]}" for k, vs in values]
    return [first] + [[*first[:i], f"{k}={v}", *first[i + 1:]] for i, (k, vs) in enumerate(values) for v in vs[1:]]


@pytest.mark.parametrize("name", MAPS)
def test_every_arm_of_every_map_composes_into_a_valid_job(name):
    spec = load_map(name, CONF)
    assert spec.arms[0].role == "baseline" and spec.rule.metric == "val_acc"
    for arm in spec.arms:
        cell = {"grid": grid_cell(spec.grid) if spec.grid else None, "paper": spec.paper_cell,
                "best": {"reg.S": 0, "reg.gamma": 2.0, "reg.rho": 0.9},
                "optuna": {"reg.S": 1, "reg.gamma": 0.3, "reg.rho": 0.4, "noise": "cosine", "seed": [10]},
                None: {}}[arm.cell]
        overrides = cell_overrides(arm, cell, spec.reg_overrides)
        assert any(o.startswith("seed=") for o in overrides), arm.name
        assert arm.cell is None or all(f"{k}={v}" in overrides for k, v in spec.reg_overrides.items())
        for job in one_value_each(overrides):
            validate(compose_cfg([f"+experiment={name}", *job]))  # raises on a job nsrun would refuse
    cfg = compose_cfg([f"+experiment={name}"])
    assert cfg.stop.name == "onset" and cfg.stop.metric == spec.rule.metric and cfg.stop.level == spec.rule.level
    assert cfg.stop.give_up_patience is None


@pytest.mark.parametrize("anchor,typo,key", [
    ("  map:\n", "    overides: {seed: [0]}\n", "overides"),  # a misspelt key of the map
    ("experiment:\n", "  stability_window: three\n", "stability_window"),  # a mistyped value
])
def test_a_typo_in_a_maps_metadata_is_refused_naming_the_key(tmp_path, anchor, typo, key):
    import shutil

    from hydra.errors import ConfigCompositionException

    conf = shutil.copytree(CONF, tmp_path / "conf")
    path = conf / "experiment" / "map_modadd_tiny.yaml"
    path.write_text(path.read_text().replace(anchor, anchor + typo, 1))
    with pytest.raises(ConfigCompositionException) as refused:
        load_map("map_modadd_tiny", conf)
    assert key in str(refused.value.__cause__ or refused.value)


def test_the_quick_map_is_the_issue_s_grid_on_the_quick_regime():
    spec = load_map("map_modadd_quick", CONF)
    quick = compose_cfg(["+experiment=modadd_quick"])
    for section in ("task", "model", "optim"):
        assert spec.regime[section] == OmegaConf.to_container(quick[section], resolve=True)
    assert spec.regime["train"]["steps"] == 12000 and spec.regime["stop"]["patience"] == 3000
    assert [a.values for a in spec.grid.axes] == [(1, 0), (0.05, 0.25, 0.75, 2.0), (0.1, 0.25, 0.5, 0.9)]
    assert spec.paper_cell == {"reg.gamma": 0.75, "reg.rho": 0.25} and spec.also_levels == (0.99,)
    seeds = {a.name: a.overrides.get("seed") for a in spec.arms}
    assert seeds["baseline"] == seeds["paper"] == seeds["best"] == [0, 1, 2, 3, 4] and seeds["grid"] == [0, 1, 2]


def test_overrides_are_hydra_s_command_line_and_cell_arms_train_the_regulariser():
    assert override_text([1, 0]) == "1,0" and override_text(2.0) == "2.0" and override_text(True) == "true"
    arm = Arm("best", "grid", "grid", {"seed": [0, 1]}, cell="best")
    assert cell_overrides(arm, {"reg.S": 0, "reg.gamma": 0.05}) == ["reg=stability", "reg.S=0", "reg.gamma=0.05",
                                                                    "seed=0,1"]
    assert cell_overrides(Arm("b", "b", "baseline", {"reg": "none", "seed": [0]}), {}) == ["reg=none", "seed=0"]


@pytest.mark.parametrize("ci, verdict", [((0.1, 0.5), "faster"), ((-0.5, -0.1), "slower"),
                                         ((-0.2, 0.3), "no difference"), ((0.0, 0.0), "no difference"),
                                         ((-math.inf, -math.inf), "slower"), ((math.nan, math.nan), "undetermined")])
def test_cell_verdict(ci, verdict):
    assert cell_verdict(ci) == verdict


# ----------------------------------------------------------------------------------------------- hand-made runs

STEPS = 1000
EVERY = 10


@cache
def resolved_config(overrides: tuple[str, ...]) -> dict:
    cfg = compose_cfg(["+experiment=map_modadd_tiny", *overrides, f"train.steps={STEPS}", f"train.eval_every={EVERY}"])
    return OmegaConf.to_container(cfg, resolve=True)


def write_run(root, sweep, overrides, seed, onset, dip=None, stop=True, seconds_per_step=0.01):
    """A run dir of the tiny map with a real resolved config (1000 steps, eval every 10) and a hand-made val_acc
    curve: 0.1 until ``onset`` (None: never), 0.35 from there (under 0.3 again in the ``dip`` interval). It
    ends as its stop rule (val_acc >= 0.3 held for 50 steps) would end it; ``stop`` False: trained to the end
    (a patience longer than the run, as the map's baseline_full arm)."""
    cfg = dict(resolved_config(tuple(overrides) + (() if stop else ("stop.patience=1000000",))), seed=seed)
    run = root / sweep / ",".join(sorted([*overrides, f"seed={seed}"]))
    run.mkdir(parents=True)
    (run / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    rows, since, last, reason = [], None, STEPS, None
    for step in range(0, STEPS + 1, EVERY):
        acc = 0.35 if onset is not None and step >= onset and not (dip and dip[0] <= step < dip[1]) else 0.1
        rows.append({"step": step, "val_acc": acc, "val_loss": 1 - acc})
        since = (step if since is None else since) if acc >= 0.3 else None
        if stop and since is not None and step - since >= 50:
            last, reason = step, f"stopped: val_acc >= 0.3 held for 50 steps (past the level since step {since})"
            break
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    timing = [{"step": r["step"], "train_seconds": r["step"] * seconds_per_step, "eval_seconds": 0.001 * r["step"]}
              for r in rows]
    (run / "timing.jsonl").write_text("".join(json.dumps(t) + "\n" for t in timing))
    (run / "DONE").write_text(f"{last}\n" + (f"{reason}\n" if reason else ""))


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    """Baseline onsets 400-440; S=0 gamma 2 rho 0.9 at 100-120 (faster), every other S=0 cell like the baseline,
    no S=1 cell ever (slower); the baseline trained to 1000 steps dips after its stop point in seed 1."""
    root = tmp_path_factory.mktemp("map")
    spec = load_map("map_modadd_tiny", CONF, root=root)
    top = spec.root
    for seed, onset in enumerate((400, 420, 440)):
        write_run(top, "baseline", ["reg=none"], seed, onset)
        write_run(top, "baseline_full", ["reg=none"], seed, onset, dip=(600, 620) if seed == 1 else None, stop=False)
    for s in (1, 0):
        for gamma in (0.25, 2.0):
            for rho in (0.25, 0.9):
                cell = ["reg=stability", f"reg.S={s}", f"reg.gamma={gamma}", f"reg.rho={rho}"]
                for seed in range(3):
                    fast = (gamma, rho) == (2.0, 0.9)
                    onset = None if s == 1 else 100 + 10 * seed if fast else (400, 430, 410)[seed]
                    write_run(top, "grid", cell, seed, onset, seconds_per_step=0.02)
    for seed in range(3):
        paper = ["reg=stability", "reg.S=1", "reg.gamma=0.25", "reg.rho=0.25"]
        write_run(top, "schedules", [*paper, "noise=linear_warmup"], seed, None, seconds_per_step=0.02)
        write_run(top, "schedules", ["reg=stability", "reg.S=0", "reg.gamma=2.0", "reg.rho=0.9", "noise=cosine"],
                  seed, 150, seconds_per_step=0.02)
        write_run(top, "variants", [*paper, "reg.stop_grad_clean=true"], seed, 300, seconds_per_step=0.02)
    return load_map_runs(spec, n_boot=1000)


def test_cells_best_cell_and_verdicts_from_hand_made_runs(hand_made):
    mr = hand_made
    level = mr.spec.rule.level
    assert mr.baseline.stats[level].steps[0] == 420 and len(mr.with_role("grid")) == 8
    best = best_cell(mr)
    assert best.values == {"reg.S": 0, "reg.gamma": 2.0, "reg.rho": 0.9} and best.stats[level].steps[0] == 110
    assert best_cell(mr, 1) is None and best_cell(mr, 0) is best
    verdicts = {c.label: cell_verdict(c.stats[level].vs_steps.fewer_ci) for c in mr.with_role("grid")}
    assert verdicts["S=0, gamma=2.0, rho=0.9"] == "faster"
    assert {v for k, v in verdicts.items() if k.startswith("S=1")} == {"slower"}
    assert verdicts["S=0, gamma=0.25, rho=0.25"] == "no difference"
    seconds = best.stats[level].vs_seconds
    assert cell_verdict(seconds.fewer_ci) == "faster" and seconds.speedup == pytest.approx(4.2 / 2.2)
    # a run stopped at val_acc >= 0.3 cannot tell whether 0.5 holds later: unknown, not "not reached"
    at_05 = mr.baseline.stats[0.5]
    assert at_05.n_unknown == 3 and at_05.n_reached == 0
    never = mr.find(("grid",), {"reg.S": 1, "reg.gamma": 0.25, "reg.rho": 0.25}).stats[0.5]
    assert never.n_unknown == 0 and never.n_reached == 0  # trained to the end: not reached
    panels = heatmap_panels(mr, "vs_steps")
    assert [p["title"] for p in panels] == ["reg.S=1", "reg.S=0"]
    assert panels[1]["marks"][1][1] and panels[1]["text"][1][1].startswith("+74%*")
    assert panels[0]["values"][0][0] == -math.inf and panels[0]["text"][0][0].startswith("n.r.*")


def test_seconds_priced_side_by_side_replace_the_runs_logged_ones(hand_made):
    """The runs logged 0.01 (baseline) and 0.02 s per step (regularised); priced at 0.01 and 0.03, the best cell's
    wall-clock speedup is the baseline's median onset 420 x 0.01 over its 110 x 0.03, and the table says 3.00x."""
    mr = load_map_runs(hand_made.spec, n_boot=1000, step_seconds={"none": 0.01, "stability": 0.03})
    level = mr.spec.rule.level
    best = mr.find(("grid",), {"reg.S": 0, "reg.gamma": 2.0, "reg.rho": 0.9})
    assert best.stats[level].vs_seconds.speedup == pytest.approx(4.2 / 3.3)
    assert [r.onsets.onset_seconds for r in best.runs] == pytest.approx([1.0 * 3, 1.1 * 3, 1.2 * 3])
    never = mr.find(("grid",), {"reg.S": 1, "reg.gamma": 0.25, "reg.rho": 0.25})
    assert all(r.onsets.onset_seconds == math.inf for r in never.runs)  # not reached stays later than any
    assert step_cost_ratio(best, mr) == pytest.approx(3.0) and step_cost_ratio(best, hand_made) == pytest.approx(2.0)
    assert "| 3.00x |" in "\n".join(markdown_table([best], mr))


def test_optuna_trials_are_counted_per_sign(tmp_path, hand_made):
    for seed, (sign, onset) in enumerate([(1, None), (1, 900), (0, 200), (0, 300), (0, None)]):
        write_run(tmp_path, "search", ["reg=stability", f"reg.S={sign}"], seed, onset)
    trials = optuna_trials_by_sign(tmp_path / "search", hand_made.spec.rule)
    assert trials == {1: {"n": 2, "n_reached": 1, "range": (900, 900)},
                      0: {"n": 3, "n_reached": 2, "range": (200, 300)}}


def test_patience_check_replays_the_stop_rule_on_full_length_curves(hand_made):
    rows = {r["seed"]: r for r in patience_check(hand_made.stop_check, hand_made.spec.rule, patiences=(50, 500))}
    assert rows[0]["rest_of_run"] == 400 and rows[0][50] == (400, 450) and rows[0][500] == (400, 900)
    # seed 1 dips under the level at 600-620: the stop rule (patience 50) reports 420, the rest of the run 620
    assert rows[1]["rest_of_run"] == 620 and rows[1][50] == (420, 470) and rows[1][500] == (620, None)
    stopped = {r.seed: r.onsets.onset_step for r in hand_made.baseline.runs}
    assert stopped == {0: 400, 1: 420, 2: 440}


def test_report_from_hand_made_runs_has_every_cell(hand_made, tmp_path):
    summary = write_map_report([hand_made], tmp_path, {"commit": "test"}, ["nsrun -m +experiment=map_modadd_tiny"])
    text = summary.read_text()
    for c in hand_made.cells:
        assert f"| {c.label} |" in text
    for stem in ("heatmap_steps_map_modadd_tiny", "heatmap_seconds_map_modadd_tiny", "overlay_map_modadd_tiny"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0 and f"{stem}.png" in text
    assert "**S=0, gamma=2.0, rho=0.9**" in text and "### Schedules" in text and "stop-grad clean" in text
    assert "### Patience check" in text and "| 1 | 1000 | 620 |" in text
    with open(tmp_path / "cells.csv") as f:
        cells = list(csv.DictReader(f))
    assert len(cells) == 2 * len(hand_made.cells)  # one row per cell and onset level
    best = next(r for r in cells if r["cell"] == "S=0, gamma=2.0, rho=0.9" and r["level"] == "0.3")
    assert best["verdict_steps"] == "faster" and float(best["onset_median"]) == 110 and best["reg.every_k_steps"] == "1"
    assert best["seeds_needed"] != "" and float(best["seeds_effect"]) == pytest.approx(1 - 3300 / 4500)
    assert "| seeds per arm to settle (power 0.8) |" in text and "seeds per arm to settle: 26.7 %: " in text
    with open(tmp_path / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert sum(r["ended_by"] == "stopped" for r in runs) == 3 + 12 + 3 + 3  # baseline, S=0 grid, cosine, stop-grad


# ----------------------------------------------------------------------------------------------- end to end


def run_map(*args, timeout=900):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "nsrun.commands.map", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_map_command_refuses_an_unknown_arm_before_anything_runs(tmp_path, capsys):
    from nsrun.commands.map import main

    with pytest.raises(SystemExit) as exited:
        main(["run", "--tiny", "--root", str(tmp_path), "--only", "grid,nope"])
    assert exited.value.code == 2 and "unknown arm(s) nope" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_tiny_map_end_to_end(tmp_path):
    out = tmp_path / "report"
    p = run_map("run", "--tiny", "--root", tmp_path, "--out", out, "--launcher", "", "--n-boot", 200,
                "train.threads=1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    spec = load_map("map_modadd_tiny", CONF, root=tmp_path)
    mr = load_map_runs(spec, n_boot=200)
    assert len(mr.with_role("grid")) == 8 and len(mr.baseline.runs) == 2 and len(mr.stop_check) == 2
    best = best_cell(mr)
    if best is None:  # no cell of the grid reached the onset in most seeds: the best arm says so and does not run
        assert "map_modadd_tiny/best skipped: no best cell yet" in p.stdout
    else:  # the best arm added seed 2 to the grid's best cell (seeds 0-1 were the grid's)
        assert f"map_modadd_tiny/best at the best cell of map_modadd_tiny: {best.label}" in p.stdout
        assert sorted(r.seed for r in best.runs) == [0, 1, 2]
    text = (out / "summary.md").read_text()
    for c in mr.cells:
        assert f"| {c.label} |" in text
    assert (out / "heatmap_steps_map_modadd_tiny.png").exists() and (out / "cells.csv").exists()
    log = [json.loads(line) for line in (spec.root / "sweeps.jsonl").read_text().splitlines()]
    assert [r["arm"] for r in log][:3] == ["baseline", "baseline_full", "grid"] and {r["exit"] for r in log} == {0}
    # rerun: every run is finished, nothing is trained again
    done = {d: (d / "DONE").read_text() for d in spec.root.rglob("*") if (d / "DONE").exists()}
    again = run_map("run", "--tiny", "--root", tmp_path, "--out", out, "--launcher", "", "--n-boot", 200,
                    "--only", "grid,best", "train.threads=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {d: (d / "DONE").read_text() for d in spec.root.rglob("*") if (d / "DONE").exists()} == done
