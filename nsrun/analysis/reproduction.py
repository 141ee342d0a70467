"""The reproduction's figures and summary from run directories (no training): for each experiment of
``conf/experiment/`` (:mod:`nsrun.analysis.experiments`), its finished runs grouped by regulariser with
onsets and statistics, figures 1-4, the claims, the theory (figure 5, claim 5) and the committed influence
result (figure 6, claim 6), claim 1 over the map where one is given (its best cell of each sign),
and ``summary.md`` / ``summary.csv`` / ``claims.csv``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nsrun.analysis import claims as claim_rules
from nsrun.analysis import figures, report, theory
from nsrun.analysis.arms import BASELINE_BEST_MEANS, N_BOOT, ExperimentRuns, Target, assign_arms, targets
from nsrun.analysis.experiments import Experiment, compose
from nsrun.analysis.maps import MapSpec, load_map_runs
from nsrun.analysis.runs import group_runs, load_runs, unknown_onset_notes
from nsrun.science.onsets import stability_key


def load_experiment(exp: Experiment, sweep_dir: Path, n_boot: int = N_BOOT) -> ExperimentRuns | None:
    """The finished runs under ``sweep_dir`` grouped by arm, with their onsets at the experiment's first
    target and the statistics of each arm against the baseline arm; None when there is none."""
    if not sweep_dir.is_dir():
        return None
    runs, notes = load_runs([sweep_dir])
    if not runs:
        return None
    stab = stability_key(set().union(*(r.rows[-1].keys() for r in runs)))
    groups, arms, merged = assign_arms(group_runs(runs), exp)
    er = ExperimentRuns(exp, groups, stab, notes, merged, n_boot, arms)
    er.targets, target_notes = targets(exp, er.group(exp.baseline))
    er.notes += target_notes
    er.use(er.targets[0] if er.targets else Target(exp.rule, exp.onset_reach))
    er.notes += unknown_onset_notes(runs, er.rule)
    return er


def experiment_figure(er: ExperimentRuns):
    """Figures 1-3: one experiment's onset curves, coloured and labelled by regulariser."""
    title = f"Figure {er.exp.figure}: {er.exp.title}{' (quick settings)' if er.exp.quick else ''}"
    target = er.target
    text = f"{target.describe()}{'' if target.reach == 'first' else ' for good'}" if target else None
    return figures.plot_onset_curves(er.groups, er.rule, er.stab_key, title, er.colour, er.label, text)


def correlation_figure(loaded: list[ExperimentRuns]):
    """Figure 4 over the loaded experiments (each run's curve coloured by its experiment's regulariser style)."""
    styles = {g.key: (er.colour(g), er.label(g)) for er in loaded for g in er.groups}
    return figures.plot_correlation([(er.exp.title, er.stab_key, er.groups) for er in loaded],
                                    lambda g: styles[g.key][0], lambda g: styles[g.key][1])


def theory_outputs(exp: Experiment, trained_run: Path | None, conf_dir: Path | None, out: Path,
                   settings: theory.TheorySettings) -> dict[str, dict]:
    """The theory tables of the experiment's random-init baseline model and of a trained run (when given),
    each written to ``out/theory_{random,trained}/`` as nsrun-theory writes them."""
    from nsrun.runner.rundir import RunDir

    models = {"random": lambda: theory.random_model(compose(conf_dir, [f"+experiment={exp.config}",
                                                                          f"reg={exp.baseline}"]))}
    if trained_run is not None:
        models["trained"] = lambda: theory.trained_model(RunDir(trained_run), lambda o: compose(conf_dir, o))
    tables = {}
    for what, load in models.items():
        cfg, task, model, description = load()
        tables[what] = theory.theory_tables(cfg, task, model, settings)
        theory.write_outputs(tables[what], description, out / f"theory_{what}")
    return tables


def influence_summaries(results: Path) -> list[tuple[Path, dict]]:
    """``(folder, summary)`` of each nsrun-influence result under ``results`` (``*/summary.json``)."""
    return [(p.parent, json.loads(p.read_text())) for p in sorted(results.glob("*/summary.json"))]


def influence_figure(found: list[tuple[Path, dict]], out: Path) -> list[Path]:
    """Figure 6 (the influence helper's per-position figures beside its bound bars)."""
    from nsrun.analysis.influence_report import plot_bound_bars

    bars = out / "fig6_bounds_tmp.png"
    plot_bound_bars([s for _, s in found], bars, paper=True)
    images = [d / "influence_by_position.png" for d, _ in found if (d / "influence_by_position.png").exists()]
    paths = figures.save(figures.plot_influence(images, bars), out, "fig6_influence")
    bars.unlink()
    return paths


def map_claim(spec: MapSpec, experiment: str, n_boot: int, notes: list[str]) -> list[dict]:
    """Claim 1 of ``experiment`` over the map ``spec`` (:func:`nsrun.analysis.claims.map_claims`); the map's notes
    on the sweeps it reads (baseline, grid) are appended to ``notes`` once the map has runs."""
    mr = load_map_runs(spec, n_boot)
    read = tuple(f"{spec.root / sweep}{end}" for sweep in spec.sweeps("baseline") + spec.sweeps("grid")
                 for end in ("/", ":"))
    notes += [f"{spec.name}: {n}" for n in mr.notes if mr.cells and n.startswith(read)]
    return claim_rules.map_claims(mr, experiment)


@dataclass
class Reproduction:
    rows: list[dict]
    claims: list[dict]
    figures: list[Path]
    summary: Path
    notes: list[str]
    n_experiments: int


def reproduce_figures(experiments: dict[str, Experiment], out: Path, conf_dir: Path | None = None,
                      root: Path | None = None,
                      theory_settings: theory.TheorySettings | None = None,
                      influence_dir: Path | None = Path("results/influence"), n_boot: int = N_BOOT,
                      maps: dict[str, MapSpec] | None = None) -> Reproduction:
    """Figures 1-6, the claims and ``summary.md`` for ``experiments`` from their run dirs (``root/NAME``, else
    each experiment's sweep dir). ``conf_dir``: the configs of the theory's models (None: nsrun's conf/);
    ``theory_settings`` None: no figure 5; ``influence_dir`` None: no figure 6; ``maps``: experiment name -> the
    map whose best cell of each sign its claim 1 also states (:func:`nsrun.analysis.claims.map_claims`).
    The theory's trained model is the first baseline run of the experiment whose claims name ``theory``."""
    out.mkdir(parents=True, exist_ok=True)
    made, rows, claims, loaded, notes = [], [], [], [], []
    settings = {}
    for name, exp in experiments.items():
        if maps and name in maps:
            claims += map_claim(maps[name], name, n_boot, notes)
            settings[f"map ({name})"] = f"{maps[name].name} ({maps[name].title}), run dirs {maps[name].root}"
        sweep_dir = root / name if root else exp.sweep_dir
        er = load_experiment(exp, sweep_dir, n_boot)
        if er is None:
            notes.append(f"{sweep_dir}: no finished runs; figure {exp.figure} left out")
            continue
        notes += [f"{name}: {note}" for note in [*er.notes, *er.config_notes]]
        loaded.append(er)
        for target in er.targets:  # claim 1 at each onset target (a baseline-derived level may give several)
            er.use(target)
            rows += claim_rules.onset_rows(er)
        if er.targets:
            er.use(er.targets[0])
        made += figures.save(experiment_figure(er), out, f"fig{exp.figure}_{exp.name}")
        claims += claim_rules.run_claims(er)
    if loaded:
        made += figures.save(correlation_figure(loaded), out, "fig4_correlation")
    theory_exp = next((e for e in experiments.values() if "theory" in e.claims), None)
    if theory_settings is not None and theory_exp is not None:
        er = next((x for x in loaded if x.exp is theory_exp), None)
        base = er.group(theory_exp.baseline) if er else None
        tables = theory_outputs(theory_exp, base.runs[0].path if base else None, conf_dir, out, theory_settings)
        made += figures.save(figures.plot_theory_summary(tables), out, "fig5_theory")
        claims.append(claim_rules.theory_claim(tables))
    found = []
    if influence_dir is not None:
        found = influence_summaries(influence_dir)
        if found:
            made += influence_figure(found, out)
        else:
            notes.append(f"no {influence_dir}/*/summary.json; figure 6 left out "
                         f"(run nsrun-influence hydra.run.dir={influence_dir}/minilm)")
        claims.append(claim_rules.influence_claim(found))
    claims.sort(key=lambda c: c["claim"])
    quick = any(e.quick for e in experiments.values())
    sweep_dirs = [e.sweep_dir for e in experiments.values()]
    common = os.path.commonpath(sweep_dirs) if len(sweep_dirs) > 1 else sweep_dirs[0].parent if sweep_dirs else ""
    settings = {"settings": "quick (reduced; see conf/experiment/*_quick.yaml)" if quick else "full",
                "run dirs": str(root or common), "onset": "first eval step from which the metric stays past the level",
                **settings}
    for er in loaded:
        if er.exp.onset_level is None or er.exp.onset_reach != "sustained":
            described = [t.describe() for t in er.targets] + ([BASELINE_BEST_MEANS] if er.exp.baseline_factors else [])
            settings[f"onset ({er.exp.name})"] = "; ".join(described) if er.targets else "no target"
        for note in er.config_notes:
            settings[f"config note ({er.exp.name})"] = note
    from nsrun.analysis.influence_report import PAPER_BOUNDS

    summary = report.write_summary(out, rows, claims, made, settings, found, PAPER_BOUNDS)
    return Reproduction(rows, claims, made, summary, notes, len(loaded))
