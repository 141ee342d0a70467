"""The map's report from its cells (:mod:`nsrun.analysis.maps`): ``summary.md`` with the heatmaps of
fewer steps (and training seconds) vs the baseline over gamma x rho, one per sign, the table of every cell with
its verdict, the schedules, the stop-gradient and '=' arms, the Optuna search and its confirmation, the overlay
of the headline cells, the patience check of early stopping, and the compute; ``cells.csv`` and ``runs.csv``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from nsrun.analysis import figures
from nsrun.analysis.claims import seconds_per_step
from nsrun.analysis.maps import (
    EXTRA_KEYS,
    PATIENCE_FACTORS,
    Cell,
    MapRuns,
    best_cell,
    cell_verdict,
    compute_account,
    optuna_result,
    optuna_trials_by_sign,
    override_text,
    patience_check,
    read_sweep_log,
    selection_seeds,
    step_price,
)
from nsrun.analysis.report import _cell, _num, fmt_compute, fmt_interval, fmt_reached
from nsrun.analysis.seeds_needed import SEEDS_RULE, fmt_seeds, onset_values, seeds_fields, seeds_needed
from nsrun.analysis.stats import GroupStats, median

TITLE = "# Where does noise-stability regularisation help on modular addition? The map"
RULE = ("Per cell: median over seeds of the steps to the onset, with a percentile-bootstrap 95 % interval; a seed "
        "that never reaches the onset counts as later than any step. Fewer steps = 1 - cell / baseline median "
        "(the two groups resampled independently); wall-clock speedup = baseline / cell median training seconds "
        "at the onset (evaluation excluded; how the seconds are counted: the settings above); s/step = training "
        "seconds per step relative to the baseline's. Verdict: faster when the interval of fewer steps (seconds) "
        "lies above 0, slower when below, no difference when it holds 0, undetermined when it is undefined. "
        + SEEDS_RULE)
COLUMNS = ("cell", "seeds (not reached)", "steps to onset, median [95 % CI]", "fewer steps vs baseline [95 % CI]",
           "seeds per arm to settle (power 0.8)", "wall-clock speedup [95 % CI]", "s/step vs baseline",
           "verdict (steps)", "verdict (seconds)")
COLOURS = ("tab:blue", "tab:red", "tab:orange", "tab:green", "tab:purple")


def versus(stats: GroupStats, what: str = "vs_steps") -> tuple[float, float, float]:
    c = getattr(stats, what)
    return (c.fewer, *c.fewer_ci) if c else (math.nan,) * 3


def cell_seeds(cell: Cell, mr: MapRuns):
    """Seeds to settle ``cell`` against the map's baseline at the map's onset level
    (:func:`nsrun.analysis.seeds_needed.seeds_needed`, the paper's effect); None for the baseline itself."""
    base = mr.baseline
    if base is None or cell is base or not cell.stats[mr.spec.rule.level].vs_steps:
        return None
    return seeds_needed(onset_values(cell.runs), onset_values(base.runs))


def step_cost_ratio(cell: Cell, mr: MapRuns) -> float:
    """Seconds per training step of ``cell`` relative to the baseline's: the side-by-side price of its
    ``reg.name`` when the map has one (``mr.step_seconds``), else the median of the runs' logged seconds."""
    base = mr.baseline
    if base is None or not cell.runs:
        return math.nan
    if mr.step_seconds:
        price = step_price(mr.step_seconds, cell.label, cell.runs[0])
        base_price = step_price(mr.step_seconds, base.label, base.runs[0])
        return price / base_price if price and base_price else math.nan
    base_sps = median([seconds_per_step(r) for r in base.runs])
    return median([seconds_per_step(r) for r in cell.runs]) / base_sps if base_sps else math.nan


def cell_columns(cell: Cell, mr: MapRuns) -> list[str]:
    """One row of :data:`COLUMNS` (and the onsets at the map's other levels) for ``cell``."""
    spec, base = mr.spec, mr.baseline
    s = cell.stats[spec.rule.level]
    ratio = step_cost_ratio(cell, mr)
    n_not = s.n - s.n_reached - s.n_unknown - s.n_failed
    seeds = (f"{s.n} ({n_not}" + (f", {s.n_unknown} unknown" if s.n_unknown else "")
             + (f", {s.n_failed} failed" if s.n_failed else "") + ")")
    row = [cell.label, seeds, fmt_interval(*s.steps)]
    if cell is base or not s.vs_steps:
        row += ["(baseline)" if cell is base else "-", "-", "-", "-", "-", "-"]
    else:
        secs = s.vs_seconds
        row += [fmt_interval(*versus(s), 1, pct=True), fmt_seeds(cell_seeds(cell, mr)),
                fmt_interval(secs.speedup, *secs.speedup_ci, 2, unit="x"),
                f"{ratio:.2f}x" if math.isfinite(ratio) else "-",
                cell_verdict(s.vs_steps.fewer_ci), cell_verdict(secs.fewer_ci)]
    for level in spec.also_levels:
        t = cell.stats[level]
        row.append(f"{fmt_reached(t.n_reached, t.n, t.n_unknown)}; {fmt_interval(*t.steps)}")
    return row


def markdown_table(cells: list[Cell], mr: MapRuns) -> list[str]:
    head = [*COLUMNS, *(f"onset {lvl:g}: reached; median [95 % CI]" for lvl in mr.spec.also_levels)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in cell_columns(cell, mr)) + " |" for cell in cells]
    return out


# ----------------------------------------------------------------------------------------------- figures


def heatmap_panels(mr: MapRuns, what: str) -> list[dict]:
    """One panel per sign: the median fewer steps (``what`` vs_steps) or seconds (vs_seconds) of each grid cell
    (constant schedule) vs the baseline; marked where the interval excludes 0."""
    grid, level, panels = mr.spec.grid, mr.spec.rule.level, []
    for pv in grid.panel.values:
        values, text, marks = [], [], []
        for gv in grid.rows.values:
            vrow, trow, mrow = [], [], []
            for rv in grid.cols.values:
                cell = mr.find(("grid",), {grid.panel.key: pv, grid.rows.key: gv, grid.cols.key: rv})
                m, lo, hi = versus(cell.stats[level], what) if cell else (math.nan,) * 3
                mark = (lo > 0 or hi < 0) if not (math.isnan(lo) or math.isnan(hi)) else False
                label = "-" if math.isnan(m) else "n.r." if m == -math.inf else f"{100 * m:+.0f}%"
                vrow.append(m)
                trow.append(label + ("*" if mark else "") + (f"\nn={len(cell.runs)}" if cell else ""))
                mrow.append(mark)
            values.append(vrow)
            text.append(trow)
            marks.append(mrow)
        panels.append({"title": f"{grid.panel.key}={override_text(pv)}", "values": values, "text": text,
                       "marks": marks, "rows": [override_text(v) for v in grid.rows.values],
                       "cols": [override_text(v) for v in grid.cols.values],
                       "row_label": grid.rows.key, "col_label": grid.cols.key})
    return panels


def headline_cells(mr: MapRuns) -> dict[Cell, str]:
    """Baseline, the paper's cell with each sign, the best cell, and the cells of a map without a grid, each once
    with its legend label."""
    spec, out = mr.spec, {}
    named = [(mr.baseline, "baseline")]
    named += [(mr.find(("grid", "cell"), {**spec.paper_cell, "reg.S": s}), "paper's cell") for s in (1, 0)]
    named += [(best_cell(mr), "best cell"), *((c, "") for c in mr.with_role("cell"))]
    for cell, name in named:
        if cell is not None:
            out[cell] = out.get(cell) or (f"{name}: {cell.label}" if name and cell.role != "baseline" else cell.label)
    return out


def write_figures(mr: MapRuns, out: Path) -> list[Path]:
    spec, made = mr.spec, []
    if spec.grid is not None and mr.baseline is not None:
        for what, unit in (("vs_steps", "steps"), ("vs_seconds", "seconds")):
            fig = figures.plot_heatmaps(
                heatmap_panels(mr, what), f"{spec.title}: fewer training {unit} than the baseline to "
                f"{spec.rule.describe()}\n(median over seeds; * and outline: the 95 % interval excludes 0; "
                "n.r.: not reached in most seeds)",
                f"fewer {unit} vs baseline (fraction)")
            made += figures.save(fig, out, f"heatmap_{unit}_{spec.name}")
    cells = headline_cells(mr)
    if cells:
        colours = {c.group.key: COLOURS[i % len(COLOURS)] for i, c in enumerate(cells)}
        labels = {c.group.key: label for c, label in cells.items()}
        fig = figures.plot_onset_curves([c.group for c in cells], spec.rule, None, f"{spec.title}: headline cells",
                                        lambda g: colours[g.key], lambda g: labels[g.key])
        made += figures.save(fig, out, f"overlay_{spec.name}")
    return made


# ----------------------------------------------------------------------------------------------- sections


def fmt_settings(mr: MapRuns) -> list[str]:
    r, spec = mr.spec.regime, mr.spec
    task, model, optim, train, stop = (r.get(k, {}) for k in ("task", "model", "optim", "train", "stop"))
    lines = [f"- config: `+experiment={spec.config}`; run dirs `{spec.root}/SWEEP/OVERRIDES`",
             f"- regime: p {task.get('p')}, {100 * task.get('train_fraction', math.nan):.0f} % of the pairs for "
             f"training, model {model.get('name')} (d_model {model.get('d_model')}, init_std {model.get('init_std')}), "
             f"lr {optim.get('lr')}, weight decay {optim.get('weight_decay')}, {train.get('steps')} steps, "
             f"eval every {train.get('eval_every')}",
             f"- onset: {spec.rule.describe()}; also at {', '.join(f'{x:g}' for x in spec.also_levels) or '-'}"]
    if spec.reg_overrides:
        lines.append("- every regularised arm: reg=stability with "
                     + ", ".join(f"{k}={override_text(v)}" for k, v in spec.reg_overrides.items()))
    if stop.get("name") == "onset":
        lines.append(f"- early stopping: {stop['metric']} {'>=' if stop['direction'] == 'above' else '<='} "
                     f"{stop['level']:g} held for {stop['patience']} steps; give-up: "
                     f"{stop['give_up_patience'] or 'none'}. A stopped run's onset is where that stretch began; its "
                     "onset at a stricter level is unknown (it cannot say whether the level holds later)")
    lines.append(f"- intervals: {mr.n_boot} bootstrap resamples")
    if mr.step_seconds:
        prices = ", ".join(f"{k if ' ' in k or '=' in k else 'reg=' + k} {1e3 * v:.2f} ms"
                           for k, v in mr.step_seconds.items())
        lines.append(f"- training seconds to the onset = onset step x the seconds per step of the run's regulariser, "
                     f"measured side by side in the report's process (one thread, interleaved): {prices} per step. "
                     "The runs' own logged seconds are not used: they ran at different times beside other jobs, "
                     "so they measure the machine's load as much as the method (`--seconds logged` uses them)")
    else:
        lines.append("- training seconds to the onset: as each run logged them (timing.jsonl), so they carry the "
                     "load of the machine at the time the run ran")
    return lines


def grid_section(mr: MapRuns) -> list[str]:
    spec, level = mr.spec, mr.spec.rule.level
    lines = ["", f"![heatmap steps](heatmap_steps_{spec.name}.png)", "",
             f"![heatmap seconds](heatmap_seconds_{spec.name}.png)", "", "### Best cells", ""]
    for pv in (*spec.grid.panel.values, None):
        cell = best_cell(mr, pv)
        which = "either sign" if pv is None else f"{spec.grid.panel.key}={override_text(pv)}"
        if cell is None:
            lines.append(f"- {which}: no cell reaches the onset in most seeds")
            continue
        s = cell.stats[level]
        lines.append(f"- {which}: **{cell.label}**: {fmt_interval(*s.steps)} steps, "
                     f"{fmt_interval(*versus(s), 1, pct=True)} fewer than the baseline "
                     f"({cell_verdict(s.vs_steps.fewer_ci) if s.vs_steps else '-'}; {s.n} seeds; "
                     f"seeds per arm to settle: {fmt_seeds(cell_seeds(cell, mr))})")
    seeds = selection_seeds(spec)
    lines += ["", f"Chosen by the lowest median steps to the onset over the grid's seeds "
              f"({', '.join(map(str, sorted(seeds))) if seeds else 'all'}: run in every cell; ties by the interval). "
              "The numbers above and in the table use every seed a cell has, those that chose it included: the best "
              "cell's interval is optimistic (winner's curse); runs.csv has each seed's onset.", "",
              "### Every cell (constant schedule)", ""]
    grid_cells = [c for c in mr.with_role("grid") if not any(k in c.values for k in EXTRA_KEYS)]
    order = {a.key: [str(v) for v in a.values] for a in spec.grid.axes}

    def position(c):
        return tuple(order[k].index(str(c.values.get(k))) if str(c.values.get(k)) in order[k] else 99 for k in order)

    return lines + markdown_table([mr.baseline, *sorted(grid_cells, key=position)], mr)


def arm_tables(mr: MapRuns) -> list[str]:
    """The schedules at the paper's and the best cell, the variants (stop-grad, '='), the cells of a map without
    a grid (the second regime), each beside its constant-schedule cell."""
    spec, lines = mr.spec, []
    base = [mr.baseline] if mr.baseline else []
    paper = [mr.find(("grid", "cell"), {**spec.paper_cell, "reg.S": s}) for s in (1, 0)]
    schedules = mr.with_role("schedule")
    if schedules:
        lines += ["", "### Schedules (noise=...)", ""]
        anchors = [c for c in [paper[0], best_cell(mr)] if c is not None]
        rows = []
        for anchor in dict.fromkeys(anchors):
            coords = {k: anchor.values[k] for k in ("reg.S", "reg.gamma", "reg.rho") if k in anchor.values}
            rows += [anchor, *[c for c in schedules if c.matches(coords) and c not in rows]]
        lines += markdown_table(base + rows, mr)
    variants = mr.with_role("variant")
    if variants:
        lines += ["", "### Stop-gradient on the clean branch, resampling '=' too (at the paper's cell)", ""]
        rows = []
        for sign, anchor in zip((1, 0), paper, strict=True):
            rows += [c for c in [anchor, *(v for v in variants if v.values.get("reg.S") == sign)] if c is not None]
        lines += markdown_table(base + rows, mr)
    cells = mr.with_role("cell")
    if cells:
        lines += ["", "### Cells", ""] + markdown_table(base + cells, mr)
    return lines


def optuna_section(mr: MapRuns) -> list[str]:
    spec = mr.spec
    if spec.optuna_dir is None:
        return []
    result = optuna_result(spec.optuna_dir)
    lines = ["", "### Optuna search (conf/hparams_search/modadd_optuna.yaml)", ""]
    if result is None:
        return lines + [f"Not run (no {spec.optuna_dir}/optimization_results.yaml)."]
    params = ", ".join(f"{k}={override_text(v)}" for k, v in result["best_params"].items())
    steps = spec.regime.get("train", {}).get("steps")
    best = best_cell(mr)
    best_steps = best.stats[spec.rule.level].steps if best else None
    lines += [f"- {result['n_trials']} trials in `{result['dir']}`; best: {params}, objective {result['best_value']} "
              f"(steps to the onset; {steps} + the penalty when not reached)",
              "- the grid's best cell: " + (f"{best.label}, median {fmt_interval(*best_steps)}" if best else "none")]
    for sign, t in sorted(optuna_trials_by_sign(spec.optuna_dir, spec.rule).items(), key=lambda kv: str(kv[0])):
        reached = f", at steps {t['range'][0]}-{t['range'][1]}" if t["range"] else ""
        lines.append(f"- trials with reg.S={sign}: {t['n']}, {t['n_reached']} reached the onset{reached}")
    confirm = mr.with_role("optuna")
    if confirm:
        lines += ["", "Confirmation of its best point with fresh seeds:", ""] + markdown_table(
            ([mr.baseline] if mr.baseline else []) + confirm, mr)
    else:
        lines.append("- confirmation with fresh seeds: not run yet "
                     "(python -m nsrun.commands.map run --only optuna_confirm)")
    return lines


def patience_section(mr: MapRuns) -> list[str]:
    if not mr.stop_check:
        return []
    spec = mr.spec
    patience = spec.regime.get("stop", {}).get("patience") or 0
    patiences = tuple(dict.fromkeys(max(1, int(f * patience)) for f in PATIENCE_FACTORS))
    rows = patience_check(mr.stop_check, spec.rule, patiences)
    stopped = {r.seed: r.onsets.onset_step for r in (mr.baseline.runs if mr.baseline else [])}
    head = ["seed", "trained to", "onset, rest of the run", *(f"patience {p}: onset (stop step)" for p in patiences),
            f"stopped baseline run (patience {patience})"]
    lines = ["", "### Patience check: early stopping's onsets vs the rest of a full-length run", "",
             "The baseline trained to the horizon without a stop rule; for each patience, the onset the stop rule "
             f"({spec.rule.metric} {spec.rule.comparison} {spec.rule.level:g}) would report on the same curve "
             "(not stopped: the rest-of-the-run onset), and the onset of the map's stopped baseline run of the same "
             "seed (equal to the replay at its patience: same config and seed, same metrics).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rest = r["rest_of_run"]
        cells = [str(r["seed"]), str(r["last_step"]), "not reached" if rest is None else str(rest)]
        for p in patiences:
            onset, stop = r[p]
            cells.append(("not reached" if onset is None else str(onset)) + (f" ({stop})" if stop is not None else ""))
        seen = stopped.get(r["seed"], "-")
        cells.append("not reached" if seen is None else str(seen))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def sweep_lines(mr: MapRuns) -> list[str]:
    """The sweeps of the map (sweeps.jsonl): each arm's last run, what it ran at, its wall time and exit code."""
    last = {row["arm"]: row for row in read_sweep_log(mr.spec.root)}
    if not last:
        return []
    lines = ["", "| arm | sweep dir | at | wall s (last run) | exit |", "|---|---|---|---|---|"]
    return lines + [f"| {r['arm']} | {r['sweep']} | {_cell(r.get('at') or '-')} | {r['seconds']:.0f} | {r['exit']} |"
                    for r in last.values()]


def compute_lines(mr: MapRuns) -> list[str]:
    c = compute_account(mr)
    return ["", "### Compute", "",
            f"- {c.runs} finished runs: {c.totals.train_seconds:.0f} s training + {c.eval_seconds:.0f} s evaluation "
            f"(summed over runs); {c.sweeps} sweeps took {c.sweep_wall_seconds:.0f} s wall time (sweeps.jsonl)",
            f"- early stopping: {fmt_compute(c.totals)}", *sweep_lines(mr)]


def map_section(mr: MapRuns, made: list[Path]) -> list[str]:
    spec = mr.spec
    lines = ["", f"## {spec.title}", "", *fmt_settings(mr)]
    lines += [f"- note: {n}" for n in mr.notes]
    if mr.baseline is None:
        return lines + ["", "No finished baseline runs yet: nothing to compare."]
    lines += ["", RULE]
    if spec.grid is not None:
        lines += grid_section(mr)
    lines += arm_tables(mr) + optuna_section(mr)
    overlay = next((p for p in made if p.name == f"overlay_{spec.name}.png"), None)
    if overlay:
        lines += ["", "### Headline cells", "", f"![overlay]({overlay.name})"]
    return lines + patience_section(mr) + compute_lines(mr)


# ----------------------------------------------------------------------------------------------- files


def write_csvs(maps: list[MapRuns], out: Path) -> None:
    with open(out / "cells.csv", "w", newline="") as f:
        w = csv.writer(f)
        head = ["map", "sweep", "role", "cell", "reg.S", "reg.gamma", "reg.rho", *EXTRA_KEYS, "level", "n", "n_reached",
                "n_unknown", "onset_median", "onset_ci_low", "onset_ci_high", "fewer_steps", "fewer_steps_ci_low",
                "fewer_steps_ci_high", "speedup_seconds", "speedup_seconds_ci_low", "speedup_seconds_ci_high",
                "verdict_steps", "verdict_seconds", *seeds_fields(None)]
        w.writerow(head)
        for mr in maps:
            for c in mr.cells:
                coords = [c.values.get(k, EXTRA_KEYS.get(k, "")) for k in head[4:7 + len(EXTRA_KEYS)]]
                for level, s in sorted(c.stats.items()):
                    vs, secs = s.vs_steps, s.vs_seconds
                    w.writerow([mr.spec.name, c.sweep, c.role, c.label, *coords, level, s.n, s.n_reached,
                                s.n_unknown, *map(_num, s.steps), *map(_num, versus(s)),
                                *(map(_num, (secs.speedup, *secs.speedup_ci)) if secs else [""] * 3),
                                cell_verdict(vs.fewer_ci) if vs else "",
                                cell_verdict(secs.fewer_ci) if secs else "",
                                *map(csv_value, seeds_fields(cell_seeds(c, mr) if level == mr.spec.rule.level
                                                             else None).values())])
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["map", "sweep", "cell", "seed", "onset_step", "onset_status", "last_step", "ended_by",
                    "train_seconds", "steps_spared", "run_dir"])
        for mr in maps:
            for c in mr.cells:
                for r in c.runs:
                    o = r.onsets
                    onset = "" if o.onset_step is None else o.onset_step
                    w.writerow([mr.spec.name, c.sweep, c.label, r.seed, onset, o.onset_status, r.last_step,
                                r.outcome.kind if r.outcome else "",
                                _num(r.train_seconds), r.steps_spared, str(r.path)])


def csv_value(v) -> str:
    return _num(v) if isinstance(v, float) else str(v)


def write_map_report(maps: list[MapRuns], out: Path, context: dict, commands: list[str] = ()) -> Path:
    """``out/summary.md`` (``context``: commit, ... as its first lines; ``commands``: the sweeps that made the
    runs), the figures, ``cells.csv`` and ``runs.csv`` for the loaded maps."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [TITLE, ""] + [f"- {k}: {v}" for k, v in context.items()]
    totals = [compute_account(mr) for mr in maps]
    train = sum(c.totals.train_seconds for c in totals if not math.isnan(c.totals.train_seconds))
    wall = sum(c.sweep_wall_seconds for c in totals)
    spared, spared_s = sum(c.totals.steps_spared for c in totals), sum(c.totals.spared_seconds_est for c in totals)
    lines.append(f"- compute, all maps: {train:.0f} s training + {sum(c.eval_seconds for c in totals):.0f} s "
                 f"evaluation over {sum(c.runs for c in totals)} runs; sweeps {wall:.0f} s wall; early stopping "
                 f"spared {spared} steps (~{spared_s:.0f} s of training)")
    lines += ["", "Sweeps that made the runs (each map's sweeps.jsonl, in the order they first ran):", "", "```bash",
              *(commands or ["# none logged"]), "```"]
    for mr in maps:
        made = write_figures(mr, out)
        lines += map_section(mr, made)
    write_csvs(maps, out)
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path
