"""make reproduce-figures: the experiment configs compose, 2-step versions of each sweep run, the summary is
computed from the run dirs the test made, and the verdict logic on known curves."""

from __future__ import annotations

import csv
import json
import math
from functools import cache
from itertools import product
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from nsrun.analysis import claims, report, theory
from nsrun.analysis.experiments import compose, load_experiments
from nsrun.analysis.reproduction import load_experiment, reproduce_figures
from nsrun.analysis.runs import flatten, matches
from nsrun.analysis.stats import spearman, speedup_verdict
from nsrun.commands.reproduce import run_sweeps
from nsrun.runner.config import validate
from tests.conftest import CONF, WIKITEXT2, WIKITEXT2_FILES, compose_cfg, shared_missing

EXPERIMENT_CONFIGS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")
                            if "\n  map:" not in p.read_text())  # the maps' (experiment.map): tests/test_map.py
SEEDS = "0,1,2"  # the 2-step sweeps run 3 of the 5 seeds (enough for the statistics, and quicker)
PARITY_SIZES = ("parity_n10", "parity_n20", "parity_n40", "parity_n100")


@cache
def experiments(quick: bool) -> dict:
    """The experiments of conf/experiment/ (their ``experiment:`` metadata) at the full or quick setting."""
    return load_experiments(CONF, quick)


@cache
def sweep_values(name: str) -> list[list[str]]:
    """Every job of an experiment's sweeps as override lists, the seed last: each entry of its
    ``experiment.sweeps`` (one sweep without) over the sweeper's params, the entry's values winning."""
    cfg = compose(CONF, [f"+experiment={name}"], hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    jobs = []
    for sweep in cfg.experiment.get("sweeps") or [""]:
        grid = dict(params, **{k: v.split(",") for k, _, v in (o.partition("=") for o in sweep.split())})
        keys = sorted(grid, key=lambda k: (k == "seed", k))
        jobs += [[f"{k}={v}" for k, v in zip(keys, values, strict=True)] for values in product(*map(grid.get, keys))]
    return jobs


def test_every_experiment_has_a_config_with_five_seeds():
    full, quick = experiments(False), experiments(True)
    assert set(full) == {"modadd", *PARITY_SIZES, "wikitext2"}
    assert set(quick) == {"modadd", "parity", "wikitext2"}  # parity and wikitext2 quick: smoke-level, as committed
    assert {e.config for e in quick.values()} == {f"{e}_quick" for e in quick}
    assert {e.config for e in (*full.values(), *quick.values())} == set(EXPERIMENT_CONFIGS)
    for name in EXPERIMENT_CONFIGS:
        jobs = sweep_values(name)
        assert len({j[-1] for j in jobs}) >= 5
        assert {"reg=none", "reg=stability"} <= {j[0] for j in jobs}
    assert {j[0] for j in sweep_values("modadd")} == {"reg=none", "reg=stability", "reg=grokfast", "reg=weight_decay"}
    for name in ("wikitext2", *PARITY_SIZES):  # both signs of the regulariser
        assert {"reg.S=1", "reg.S=0"} <= {o for j in sweep_values(name) for o in j}


def test_experiment_metadata_is_read_from_the_configs_and_quick_files_override_it():
    full, quick = experiments(False), experiments(True)
    assert list(full) == ["modadd", *PARITY_SIZES, "wikitext2"]  # figure order, then sizes by value
    wt = full["wikitext2"]
    assert (wt.onset_metric, wt.onset_level, wt.baseline_factors, wt.onset_reach) == ("val_loss", None, (1.0, 1.05),
                                                                                       "first")
    assert (quick["wikitext2"].onset_metric, quick["wikitext2"].onset_level) == ("val_loss", 4.3)
    assert quick["wikitext2"].text_subset == {"train_lines": 1000, "val_lines": 500}
    assert wt.text_subset is not None and wt.sweep_dir == Path("runs/reproduce/wikitext2")
    assert quick["modadd"].sweep_dir == Path("runs/reproduce-quick/modadd")
    for exp in (full["modadd"], *quick.values()):
        assert (exp.baseline, exp.regulariser) == ("none", "stability")
    for exp in (quick["parity"], quick["wikitext2"]):
        assert list(exp.groups) == [j[0].removeprefix("reg=") for j in sweep_values(exp.config)[::5]]
    for exp in (full["modadd"], quick["modadd"]):  # baseline and both signs first, then the peers, then S 0's others
        assert list(exp.groups) == ["none", "stability", "S0", "grokfast", "weight_decay", "S0_best", "S0_cheap"]
        assert [" ".join(j[:-1]) for j in sweep_values(exp.config)[::5]][:4] == [
            "reg=none", "reg=stability", "reg=stability reg.S=0", "reg=grokfast"]
    assert wt.arms_with_role("regulariser") == ["S1_rho25", "S1_rho75", "S1_rho90"]
    assert wt.arms_with_role("control") == ["S0_rho25", "S0_rho75", "S0_rho90"]
    for name in PARITY_SIZES:
        assert list(full[name].groups) == ["none", "S1", "S0"] and "lag" in full[name].claims
    assert full["modadd"].paper_fewer_steps == 0.267 and "theory" in full["modadd"].claims


@pytest.mark.parametrize("name", EXPERIMENT_CONFIGS)
def test_experiment_configs_compose_and_validate(name, tmp_path):
    """Every job of the experiment's sweeps composes, validates and lands in exactly one of its arms."""
    extra = []
    if name.startswith("wikitext2"):
        if missing := shared_missing(*WIKITEXT2_FILES):
            pytest.skip(missing)
        extra = [f"task.data_dir={WIKITEXT2}"]
    exp = {e.config: e for e in (*experiments(False).values(), *experiments(True).values())}[name]
    arms_of_jobs = []
    for job in sweep_values(name):
        if job[-1] != "seed=0":  # the seed changes nothing in the composition
            continue
        cfg = compose_cfg([f"+experiment={name}", *job, *extra])
        validate(cfg)
        assert cfg.reg.name == job[0].split("=")[1]
        assert cfg.logger.name == "none"
        config = flatten(OmegaConf.to_container(cfg, resolve=True))
        arms = [arm for arm in exp.groups if matches(config, exp.selector(arm))]
        assert len(arms) == 1, (job, arms)
        arms_of_jobs += arms
    assert sorted(arms_of_jobs) == sorted(exp.groups)  # one sweep job per arm and seed
    paper = {"modadd": (0.75, 0.25), "parity": (0.05, 0.05)}
    base = name.removesuffix("_quick").partition("_n")[0]
    cfg = compose_cfg([f"+experiment={name}", "reg=stability", *extra])
    if base in paper:
        assert (cfg.reg.gamma, cfg.reg.rho) == paper[base]
    if base == "modadd":
        assert cfg.task.p == 113 or name.endswith("_quick")
        wd = compose_cfg([f"+experiment={name}", "reg=weight_decay"])
        assert wd.optim.weight_decay > cfg.optim.weight_decay and wd.reg.get("gamma", 0) == 0  # no stability term
    if base == "wikitext2":
        assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.task.vocab_size) == (4, 30, 6, 500)
    if base == "parity" and not name.endswith("_quick"):
        assert cfg.task.n_bits == int(name.removeprefix("parity_n")) and cfg.stop.name == "onset"


def test_weight_decay_peer_is_plain_cross_entropy():
    from nsrun.runner.config import build_objective
    from nsrun.science.objective import CrossEntropy

    cfg = compose_cfg(["reg=weight_decay", "task.p=23", "model=tiny"])
    assert cfg.optim.weight_decay == 3.0 and cfg.reg.name == "weight_decay"
    assert isinstance(build_objective(cfg, None), CrossEntropy)
    assert compose_cfg(["reg=weight_decay", "optim.weight_decay=5.0"]).optim.weight_decay == 5.0


# ------------------------------------------------------------------------------- 2-step sweeps -> summary


# the 2-step sweeps of every quick experiment take about 45 s (24 runs in 3 nsrun processes): slow. By default the
# same code is checked in parts: every job composes and validates (above), tests/test_arms.py runs parity_n10's
# sweeps at 2 steps and reads them back, and the summary, figures and verdicts come from hand-made run dirs (below)
@pytest.fixture(scope="module")
def two_step(tmp_path_factory):
    """2-step versions of every quick sweep (all regulariser options x 3 seeds), Hydra's basic launcher."""
    if missing := shared_missing(*WIKITEXT2_FILES):
        pytest.skip(missing)  # the quick experiments include WikiText-2
    root = tmp_path_factory.mktemp("reproduce")
    tiny = ["train.steps=2", "train.eval_every=1", "train.progress=none", "stability.n_examples=32", f"seed={SEEDS}"]
    failed = run_sweeps(experiments(True), None, tiny, root, text_lines=(30, 15))
    assert failed == 0
    return root


@pytest.mark.slow
def test_two_step_sweeps_write_one_run_dir_per_job(two_step):
    for name in experiments(True):
        runs = sorted(p.parent for p in (two_step / name).glob("*/DONE"))
        assert len(runs) == len({j[0] for j in sweep_values(f"{name}_quick")}) * 3
        for run in runs:
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows] == [0, 1, 2]
            assert any(k.startswith("stab_token_val_rho") for k in rows[-1])
        assert (two_step / name / "reg=none,seed=0,stability.n_examples=32,train.eval_every=1,train.steps=2").is_dir()
        assert {r.name.split(",")[1] for r in runs} == {"seed=0", "seed=1", "seed=2"}


@pytest.mark.slow
def test_rerun_skips_finished_runs(two_step):
    run = two_step / "parity" / "reg=none,seed=0,stability.n_examples=32,train.eval_every=1,train.steps=2"
    before = (run / "metrics.jsonl").stat().st_mtime_ns, (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    tiny = ["train.steps=2", "train.eval_every=1", "train.progress=none", "stability.n_examples=32", "seed=0",
            "reg=none"]
    assert run_sweeps({"parity": experiments(True)["parity"]}, None, tiny, two_step) == 0
    after = (run / "metrics.jsonl").stat().st_mtime_ns, (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert before == after


@pytest.mark.slow
def test_summary_and_figures_are_computed_from_the_run_dirs(two_step, tmp_path):
    out = tmp_path / "out"
    result = reproduce_figures(experiments(True), out, CONF, two_step, theory.LEVELS["smoke"], None, n_boot=200)
    assert result.n_experiments == 3
    for stem in ("fig1_modadd", "fig2_parity", "fig3_wikitext2", "fig4_correlation", "fig5_theory"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").stat().st_size > 0
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    by = {(r["experiment"], r["reg"]): r for r in rows}
    modadd_groups = experiments(True)["modadd"].groups  # none, stability, grokfast, weight_decay
    assert set(by) == {("modadd", r) for r in modadd_groups} | {(e, r) for e in ("parity", "wikitext2")
                                                               for r in ("none", "stability")}
    for (name, reg), row in by.items():
        runs = [p.parent for p in (two_step / name).glob(f"reg={reg},*/DONE")]
        last = [json.loads((r / "metrics.jsonl").read_text().splitlines()[-1]) for r in runs]
        exp = experiments(True)[name]
        level, key = exp.onset_level, exp.onset_metric
        reached = [x[key] >= level if key == "val_acc" else x[key] <= level for x in last]
        assert int(row["n_seeds"]) == len(runs) == 3
        assert int(row["n_not_reached"]) == reached.count(False)
    # after 2 steps nothing has generalised: every claim-1 verdict is inconclusive, none is invented
    assert {by[(e, "stability")]["verdict"] for e in experiments(True)} == {"inconclusive"}
    text = (out / "summary.md").read_text()
    assert "~4500 -> ~3300" in text and "![fig1_modadd](fig1_modadd.png)" in text
    with open(out / "claims.csv") as f:
        claimed = {int(c["claim"]) for c in csv.DictReader(f)}
    assert {2, 3, 4, 5} <= claimed


# ------------------------------------------------------------------------------- verdict logic, known curves


def write_run(path: Path, reg: str, seed: int, onset: int | None, steps: int = 3000, every: int = 100,
              stab: tuple[float, float] = (0.9, 0.3)):
    """A finished run dir whose validation accuracy jumps from 0.1 to 1.0 at ``onset`` (None: never), and
    whose stability goes from ``stab[0]`` to ``stab[1]`` one eval before the onset."""
    path.mkdir(parents=True)
    config = {"seed": seed, "task": {"name": "modadd", "p": 23}, "reg": {"name": reg}, "train": {"steps": steps}}
    (path / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    rows, timing = [], []
    for step in range(0, steps + 1, every):
        done = onset is not None and step >= onset
        fell = onset is not None and step >= onset - every
        rows.append({"step": step, "val_acc": 1.0 if done else 0.1, "val_loss": 0.01 if done else 3.0,
                     "stab_token_val_rho0.25": stab[1] if fell else stab[0]})
        timing.append({"step": step, "train_seconds": step * (0.02 if reg == "stability" else 0.01)})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "timing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in timing))
    (path / "DONE").write_text("")


def summary_for(tmp_path: Path, baseline: list, regularised: list, stab=(0.9, 0.3)) -> dict:
    for seed, onset in enumerate(baseline):
        write_run(tmp_path / f"reg=none,seed={seed}", "none", seed, onset, stab=stab)
    for seed, onset in enumerate(regularised):
        write_run(tmp_path / f"reg=stability,seed={seed}", "stability", seed, onset, stab=stab)
    loaded = load_experiment(experiments(True)["modadd"], tmp_path, n_boot=2000)
    return {r["reg"]: r for r in claims.onset_rows(loaded)}, loaded


def test_verdict_reproduced_when_the_regulariser_is_faster_in_every_seed(tmp_path):
    rows, loaded = summary_for(tmp_path, [2000, 2100, 2200, 2300, 2400], [1400, 1500, 1600, 1700, 1800])
    reg = rows["stability"]
    assert reg["onset_median"] == 1600 and rows["none"]["onset_median"] == 2200
    assert reg["fewer_steps"] == pytest.approx(1 - 1600 / 2200)
    assert reg["fewer_ci_low"] > 0 and reg["verdict"] == "reproduced"
    assert reg["speedup"] == pytest.approx(2200 / 1600)
    assert reg["time_per_step_ratio"] == pytest.approx(2.0)
    # wall clock: twice the cost per step eats the 1.375x step speedup
    assert reg["wallclock_speedup"] == pytest.approx(2200 * 0.01 / (1600 * 0.02))
    lag = claims.lag_claim(loaded)
    assert lag["verdict"] == "reproduced" and "-100" in lag["measured"]


def test_lag_claim_not_reproduced_when_stability_rises(tmp_path):
    _, loaded = summary_for(tmp_path, [2000, 2100, 2200, 2300, 2400], [1400, 1500, 1600, 1700, 1800], stab=(0.5, 0.6))
    claim = claims.lag_claim(loaded)
    assert claim["verdict"] == "not reproduced" and "rises" in claim["reason"]
    assert "+0.100" in claim["measured"]


def test_verdict_not_reproduced_when_the_regulariser_is_slower(tmp_path):
    rows, _ = summary_for(tmp_path, [1400, 1500, 1600, 1700, 1800], [2000, 2100, 2200, 2300, 2400])
    assert rows["stability"]["fewer_ci_high"] <= 0 and rows["stability"]["verdict"] == "not reproduced"


def test_verdict_inconclusive_when_the_seeds_overlap(tmp_path):
    rows, _ = summary_for(tmp_path, [1000, 1500, 2000, 2500, 2900], [800, 1400, 2100, 2600, 2900])
    reg = rows["stability"]
    assert reg["fewer_ci_low"] <= 0 < reg["fewer_ci_high"] and reg["verdict"] == "inconclusive"
    # how many seeds would settle it: the paper's 26.7 % at this spread needs more than the 5 there are
    assert reg["seeds_effect"] == pytest.approx(0.267) and reg["seeds_needed"] > 5
    assert reg["seeds_to_settle"].startswith("26.7 %: ") and "observed -5.0 %" in reg["seeds_to_settle"]
    lines = report.verdict_lines(list(rows.values()), [])
    assert len(lines) == 1 and f"seeds per arm to settle (power 0.8): {reg['seeds_to_settle']}" in lines[0]


def test_verdict_counts_not_reached_seeds(tmp_path):
    rows, _ = summary_for(tmp_path, [None, None, None, 2500, None], [1000, 1100, 1200, 1300, 1400])
    assert rows["none"]["n_not_reached"] == 4 and rows["stability"]["n_not_reached"] == 0
    assert math.isinf(rows["none"]["onset_median"])
    assert rows["stability"]["verdict"] == "reproduced"  # the baseline never got there in most seeds
    # one regularised seed without an onset: too many bootstrap medians are inf / inf to give an interval
    rows, _ = summary_for(tmp_path / "a", [None, None, None, 2500, None], [1000, 1100, 1200, 1300, None])
    assert rows["stability"]["n_not_reached"] == 1 and rows["stability"]["verdict"] == "inconclusive"
    rows, _ = summary_for(tmp_path / "b", [None] * 5, [None] * 5)
    assert rows["stability"]["verdict"] == "inconclusive"


@pytest.mark.parametrize("ci, paper, expected", [
    ((0.1, 0.4), 0.267, "reproduced"), ((-0.3, -0.05), 0.267, "not reproduced"),
    ((-0.05, 0.1), 0.267, "not reproduced"), ((-0.05, 0.5), 0.267, "inconclusive"),
    ((math.nan, math.nan), 0.267, "inconclusive"),
])
def test_speedup_verdict_rule(ci, paper, expected):
    assert speedup_verdict(ci, 1000.0, 1500.0, 5, 5, paper)[0] == expected
    assert speedup_verdict(ci, 1000.0, 1500.0, 2, 5, paper)[0] == "inconclusive"


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


# ------------------------------------------------------------------------------- claim 1 over the map


@pytest.fixture(scope="module")
def tiny_map(tmp_path_factory):
    """The tiny map's baseline (onsets 400-440) and its 2 x 2 grid of each sign, hand-made (tests/test_map.py's
    run dirs): with S=1 gamma 0.25 rho 0.25 groks like the baseline and the other cells never; with S=0 gamma 2
    rho 0.9 groks at 100-120 and gamma 0.25 rho 0.25 at 700-720. Regularised runs cost twice the baseline's step."""
    from nsrun.analysis.maps import load_map
    from tests.test_map import write_run as write_map_run

    spec = load_map("map_modadd_tiny", CONF, root=tmp_path_factory.mktemp("map"))
    for seed, onset in enumerate((400, 420, 440)):
        write_map_run(spec.root, "baseline", ["reg=none"], seed, onset)
    onsets = {(1, 0.25, 0.25): (400, 430, 410), (0, 2.0, 0.9): (100, 110, 120), (0, 0.25, 0.25): (700, 720, 710)}
    for s, gamma, rho in product((1, 0), (0.25, 2.0), (0.25, 0.9)):
        cell = ["reg=stability", f"reg.S={s}", f"reg.gamma={gamma}", f"reg.rho={rho}"]
        for seed, onset in enumerate(onsets.get((s, gamma, rho), (None,) * 3)):
            write_map_run(spec.root, "grid", cell, seed, onset, seconds_per_step=0.02)
    return spec


def test_map_claims_give_the_best_cell_of_each_sign_with_its_verdict(tiny_map):
    from nsrun.analysis.maps import best_cell, load_map_runs

    mr = load_map_runs(tiny_map, n_boot=1000)
    level = tiny_map.rule.level
    rows = claims.map_claims(mr, "modadd")
    assert [(r["claim"], r["experiment"]) for r in rows] == [(1, "modadd")] * 2
    s1, s0 = rows
    assert "reg.S=1" in s1["statement"] and "reg.S=0" in s0["statement"]
    assert s1["measured"].startswith("S=1, gamma=0.25, rho=0.25 (3 seeds; 4 of the grid's 4 cells with reg.S=1")
    assert s1["verdict"] == "no difference" and "in training seconds: slower" in s1["reason"]
    assert s0["measured"].startswith("S=0, gamma=2.0, rho=0.9 (3 seeds;") and s0["verdict"] == "faster"
    best = best_cell(mr, 0).stats[level]  # the numbers are the map's own
    steps = "{:.0f} [{:.0f}, {:.0f}]".format(*best.steps)
    assert f"{steps} vs baseline 420 [" in s0["measured"]
    fewer = best.vs_steps.fewer
    assert fewer == pytest.approx(1 - 110 / 420) and f"{100 * fewer:.1f} % [" in s0["measured"]
    assert f"wall-clock speedup {best.vs_seconds.speedup:.2f}x [" in s0["measured"]
    assert "chosen on seeds 0, 1" in s0["reason"]
    # no cell of a sign reaches the onset in most seeds: said so, no verdict
    mr.cells = [c for c in mr.cells if c is not best_cell(mr, 1)]
    s1 = claims.map_claims(mr, "modadd")[0]
    assert s1["verdict"] == "" and s1["measured"] == ("no cell reaches the onset in most of seeds 0, 1 (3 of the "
                                                      "grid's 4 cells with reg.S=1 have runs)")


def test_summary_states_the_map_s_best_cells_after_modadd_s_claim_1_or_that_it_has_not_run(tiny_map, tmp_path):
    from dataclasses import replace

    for seed, (base, reg) in enumerate([(2000, 1400), (2100, 1500), (2200, 1600)]):
        write_run(tmp_path / "modadd" / f"reg=none,seed={seed}", "none", seed, base)
        write_run(tmp_path / "modadd" / f"reg=stability,seed={seed}", "stability", seed, reg)
    modadd = {"modadd": experiments(True)["modadd"]}
    result = reproduce_figures(modadd, tmp_path / "out", CONF, tmp_path, None, None, 1000, {"modadd": tiny_map})
    lines = (tmp_path / "out" / "summary.md").read_text().splitlines()
    table = lines[lines.index("## Claims 1-6: verdicts"):]
    ones = [line for line in table if line.startswith("| 1 | modadd |")]
    assert len(ones) == 3 and "the regulariser (stability reg., S 1)" in ones[0] and "**reproduced**" in ones[0]
    assert "reg.S=1" in ones[1] and "**no difference**" in ones[1] and "reg.S=0" in ones[2] and "**faster**" in ones[2]
    assert any(line.startswith("Modular addition over the map") for line in lines)
    assert f"- map (modadd): map_modadd_tiny (Modular addition, tiny (test only)), run dirs {tiny_map.root}" in lines
    with open(tmp_path / "out" / "claims.csv") as f:
        assert [c["verdict"] for c in csv.DictReader(f) if c["claim"] == "1"] == ["no difference", "faster"]
    assert [c["verdict"] for c in result.claims if c["claim"] == 1] == ["no difference", "faster"]
    # the map has not run: one line in its place, no rule paragraph
    missing = replace(tiny_map, root=tmp_path / "no-map")
    reproduce_figures(modadd, tmp_path / "out2", CONF, tmp_path, None, None, 1000, {"modadd": missing})
    lines = (tmp_path / "out2" / "summary.md").read_text().splitlines()
    ones = [line for line in lines if line.startswith("| 1 | modadd |")]
    assert len(ones) == 2 and ones[1] == ("| 1 | modadd | over the map (map_modadd_tiny), the best cell of each sign "
                                          f"| map_modadd_tiny: it has not run: no finished runs in {missing.root} "
                                          "(make map; docs/map.md) | - |")
    assert not any(line.startswith("Modular addition over the map") for line in lines)


def test_map_root_is_refused_in_one_line_when_it_is_not_a_directory_or_not_read(tmp_path, capsys, monkeypatch):
    from nsrun.commands import reproduce
    from nsrun.commands.reproduce import parse_args

    monkeypatch.setattr(reproduce, "load_experiments", lambda conf_dir, quick: experiments(quick))  # composed once
    args = parse_args(["figures", "--quick", "--map-root", str(tmp_path)], CONF)
    assert args.maps["modadd"].root == tmp_path and args.maps["modadd"].name == "map_modadd_quick"
    assert parse_args(["figures", "--quick"], CONF).maps["modadd"].root == Path("runs/map/modadd_quick")
    for argv, says in ((["--map-root", str(tmp_path / "nope")], f"--map-root: {tmp_path / 'nope'} is not a directory"),
                       (["--only", "parity", "--map-root", str(tmp_path)], "--map-root: only modadd reads a map")):
        with pytest.raises(SystemExit) as e:
            parse_args(["figures", "--quick", *argv], CONF)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and says in err[-1] and not any("Traceback" in x for x in err)
