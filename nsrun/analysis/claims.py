"""The paper's claims (SCIENCE.md section 4) and their verdicts, from an experiment's grouped runs.

Claim 1: the regulariser reaches the onset in fewer steps (:func:`onset_rows`, per group vs the baseline).
Claim 2: stability falls, and the fall precedes generalisation (:func:`lag_claim`).
Claim 3: the regularised model's stability stays high while the baseline's falls (:func:`final_stability_claim`).
Claim 4: stability and validation loss correlate over training (:func:`correlation_claim`).
Claim 5: theory vs measurement (:func:`theory_claim`).
Claim 6: influence of a pretrained model (:func:`influence_claim`).
Claim 1 over the map: the best cell of each sign against the map's baseline (:func:`map_claims`).
The verdict rules are :func:`nsrun.analysis.stats.speedup_verdict` and :func:`~nsrun.analysis.stats.interval_verdict`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from nsrun.analysis.arms import ExperimentRuns
from nsrun.analysis.maps import EXTRA_KEYS, MapRuns, best_cell, cell_verdict, override_text, same_value, selection_seeds
from nsrun.analysis.report import fmt_ci, fmt_interval
from nsrun.analysis.seeds_needed import PAPER_FEWER, fmt_seeds, onset_values, seeds_fields, seeds_needed
from nsrun.analysis.stats import (
    MIN_SEEDS,
    GroupStats,
    bootstrap_ci,
    interval_verdict,
    median,
    median_ci,
    median_rows,
    spearman,
    speedup_verdict,
)
from nsrun.science.onsets import curve

NAN3 = (math.nan, math.nan, math.nan)


def seconds_per_step(run) -> float:
    if not run.timing:
        return math.nan
    last = run.timing[-1]
    return last["train_seconds"] / last["step"] if last.get("step") else math.nan


def _last_values(runs, key: str) -> list[float]:
    return [curve(r.rows, key)[1][-1] for r in runs]


def _last_and_fall(runs, key: str) -> tuple[list[float], list[float]]:
    """Per run: the last value of ``key`` and its fall from its peak (peak - last)."""
    return _last_values(runs, key), [max(curve(r.rows, key)[1]) - curve(r.rows, key)[1][-1] for r in runs]


def _with_value(s: GroupStats) -> int:
    """Runs of a group with an onset value (reached or not): not unknown, not failed."""
    return s.n - s.n_unknown - s.n_failed


def onset_rows(er: ExperimentRuns) -> list[dict]:
    """Claim 1, one row per group: onsets, fewer steps and speedup vs the baseline, wall-clock, the paper's
    number, and the verdict (for each regulariser arm), at the experiment's current target (``er.target``)."""
    exp, rows = er.exp, []
    base = er.group(exp.baseline)
    base_sps = median([seconds_per_step(r) for r in base.runs]) if base else math.nan
    rule = er.rule
    regularisers = exp.arms_with_role("regulariser")
    for g in er.groups:
        s, name = g.stats, er.reg(g)
        vs, secs = s.vs_steps, s.vs_seconds
        final = _last_values(g.runs, rule.metric)
        row = {"experiment": exp.name, "figure": exp.figure, "group": er.label(g), "reg": name,
               "onset": er.target.describe() if er.target else f"{rule.metric} {rule.comparison} {rule.level:g}",
               "n_seeds": s.n, "n_not_reached": s.n - s.n_reached - s.n_unknown - s.n_failed,
               "onset_median": s.steps[0], "onset_ci_low": s.steps[1], "onset_ci_high": s.steps[2],
               "fewer_steps": vs.fewer if vs else math.nan,
               "fewer_ci_low": vs.fewer_ci[0] if vs else math.nan,
               "fewer_ci_high": vs.fewer_ci[1] if vs else math.nan,
               "speedup": vs.speedup if vs else math.nan,
               "speedup_ci_low": vs.speedup_ci[0] if vs else math.nan,
               "speedup_ci_high": vs.speedup_ci[1] if vs else math.nan,
               "wallclock_speedup": secs.speedup if secs else math.nan,
               "wallclock_speedup_ci_low": secs.speedup_ci[0] if secs else math.nan,
               "wallclock_speedup_ci_high": secs.speedup_ci[1] if secs else math.nan,
               "time_per_step_ratio": median([seconds_per_step(r) for r in g.runs]) / base_sps if base else math.nan,
               "final_median": median(final), "final_min": min(final), "final_max": max(final),
               "paper": "", "verdict": "", "reason": "", "n_unknown": s.n_unknown,
               **{f"compute_{k}": v for k, v in asdict(s.compute).items()}, **seeds_fields(None), "seeds_to_settle": ""}
        if name in regularisers and base is not None and vs:
            row["paper"] = exp.paper
            row["verdict"], row["reason"] = speedup_verdict(
                vs.fewer_ci, s.steps[0], base.stats.steps[0], _with_value(s), _with_value(base.stats),
                exp.paper_fewer_steps)
            settle = seeds_needed(onset_values(g.runs), onset_values(base.runs),
                                  exp.paper_fewer_steps or PAPER_FEWER)
            row.update(seeds_fields(settle), seeds_to_settle=fmt_seeds(settle))
        elif name == exp.baseline:
            row["reason"] = "baseline"
        rows.append(row)
    return rows


def lag_claim(er: ExperimentRuns) -> dict:
    """Claim 2: stability falls during training, and the fall precedes generalisation. First whether it falls
    at all (last minus first logged value per run; an interval above 0 means it rises: not reproduced), then
    the lag = steepest stability fall minus accuracy onset (interval below 0: reproduced). Baseline and
    regulariser arms' runs together (not the controls: penalising stability is not the training it describes)."""
    key = er.stab_key
    arms = [er.exp.baseline, *er.exp.arms_with_role("regulariser")]
    runs = [r for g in er.groups if er.reg(g) in arms for r in g.runs]

    def changes(k):
        return [curve(r.rows, k)[1][-1] - curve(r.rows, k)[1][0] for r in runs if k and curve(r.rows, k)[1]]

    norm_key = f"n{key}" if key else None
    change, norm_change = changes(key), changes(norm_key)
    lags = [float(r.onsets.lag_steps) for r in runs if r.onsets.lag_steps is not None]
    m, lo, hi = median_ci(lags, er.n_boot) if lags else NAN3
    c = median_ci(change, er.n_boot) if change else NAN3
    nc = median_ci(norm_change, er.n_boot) if norm_change else NAN3
    measured = (f"{key} last - first: {c[0]:+.3f} [{c[1]:+.3f}, {c[2]:+.3f}]; normalised {norm_key}: "
                f"{nc[0]:+.3f} [{nc[1]:+.3f}, {nc[2]:+.3f}] (n = {len(change)} runs, {' and '.join(arms)}); "
                f"lag steepest fall - onset {fmt_ci((m, lo, hi))} steps (n = {len(lags)})")
    if len(change) >= MIN_SEEDS and c[1] > 0:
        verdict, reason = "not reproduced", f"{key} rises over training instead of falling"
    else:
        verdict, reason = interval_verdict((-hi, -lo), len(lags), "the fall precedes the onset (lag < 0)",
                                           "the fall comes at or after the onset (lag >= 0)")
    return {"claim": 2, "experiment": er.exp.name,
            "statement": "stability falls during training and the fall precedes the rise of validation accuracy",
            "measured": measured, "verdict": verdict, "reason": reason}


def final_stability_claim(er: ExperimentRuns, arm: str | None = None) -> dict:
    """Claim 3: the regularised model's (``arm``, default the first regulariser arm) stability stays high while
    the baseline's falls (last eval values; inconclusive when the baseline's does not fall 10 % below its
    peak within the run)."""
    arm = arm or er.exp.regulariser
    base, reg = er.group(er.exp.baseline), er.group(arm)
    key = er.stab_key
    if base is None or reg is None or key is None:
        return {"claim": 3, "experiment": er.exp.name, "statement": "regularised stability stays high",
                "measured": "missing groups or stability key", "verdict": "inconclusive", "reason": "no data"}

    base_last, base_fall = _last_and_fall(base.runs, key)
    reg_last, reg_fall = _last_and_fall(reg.runs, key)
    diff = median(reg_last) - median(base_last)
    ci = bootstrap_ci([reg_last, base_last], lambda a, b: median_rows(a) - median_rows(b), er.n_boot)
    verdict, reason = interval_verdict(ci, min(len(reg_last), len(base_last)),
                                       "regularised stability ends higher than the baseline's",
                                       "regularised stability ends at or below the baseline's")
    base_peak = median([max(curve(r.rows, key)[1]) for r in base.runs])
    if verdict == "reproduced" and median(base_fall) < 0.1 * base_peak:
        verdict, reason = "inconclusive", ("regularised stability ends higher, but the baseline's does not fall "
                                           "(less than 10 % below its peak) within the run")
    measured = (f"last {key}: {er.label(reg)} {median(reg_last):.3f} vs baseline {median(base_last):.3f} "
                f"(difference {diff:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]); fall from its peak: "
                f"{er.label(reg)} {median(reg_fall):.3f}, baseline {median(base_fall):.3f}")
    norm = f"n{key}"
    if all(curve(r.rows, norm)[1] for r in (*base.runs, *reg.runs)):  # the normalised variant, for the record
        (nb, nb_fall), (nr, nr_fall) = (_last_and_fall(runs, norm) for runs in (base.runs, reg.runs))
        nci = bootstrap_ci([nr, nb], lambda a, b: median_rows(a) - median_rows(b), er.n_boot)
        measured += (f"; normalised {norm}: {median(nr):.3f} vs {median(nb):.3f} (difference "
                     f"{median(nr) - median(nb):+.3f} [{nci[0]:+.3f}, {nci[1]:+.3f}]), fall from its peak "
                     f"{median(nr_fall):.3f} vs {median(nb_fall):.3f}")
    return {"claim": 3, "experiment": er.exp.name,
            "statement": "the regularised model's stability stays high while the baseline's falls",
            "measured": measured, "verdict": verdict, "reason": reason}


def run_correlations(groups, key: str | None) -> list[float]:
    """Spearman correlation of ``key`` and val_loss over training, per run (NaN where undefined)."""
    rhos = []
    for g in groups:
        for r in g.runs:
            pairs = [(row.get(key), row.get("val_loss")) for row in r.rows]
            rhos.append(spearman([a if a is not None else math.nan for a, _ in pairs],
                                 [b if b is not None else math.nan for _, b in pairs]))
    return rhos


def correlation_claim(er: ExperimentRuns) -> dict:
    """Claim 4: stability and validation loss correlate over training (Spearman per run, all groups)."""
    key = er.stab_key
    rhos = [x for x in run_correlations(er.groups, key) if not math.isnan(x)]
    m, lo, hi = median_ci(rhos, er.n_boot) if rhos else NAN3
    sign = 1 if m >= 0 else -1
    verdict, reason = interval_verdict((sign * lo, sign * hi) if sign > 0 else (-hi, -lo), len(rhos),
                                       f"{'positive' if sign > 0 else 'negative'} correlation, interval excludes 0",
                                       "no consistent correlation")
    return {"claim": 4, "experiment": er.exp.name,
            "statement": "stability and validation loss correlate over training",
            "measured": f"Spearman({key}, val_loss) per run: median {m:+.2f} [{lo:+.2f}, {hi:+.2f}], n = {len(rhos)}",
            "verdict": verdict, "reason": reason}


# claims an experiment names in its ``experiment.claims`` (conf/experiment/*.yaml)
RUN_CLAIMS = {"lag": lag_claim, "final_stability": final_stability_claim, "correlation": correlation_claim}


def run_claims(er: ExperimentRuns) -> list[dict]:
    """The claims an experiment names (but theory), claim 3 once per regulariser arm with runs."""
    out = []
    for name in er.exp.claims:
        if name == "final_stability":
            arms = [arm for arm in er.exp.arms_with_role("regulariser") if er.group(arm)] or [None]
            out += [final_stability_claim(er, arm) for arm in arms]
        elif name != "theory":
            out.append(RUN_CLAIMS[name](er))
    return out


def theory_claim(tables: dict[str, dict]) -> dict:
    """Claim 5: the ReLU closed form matches Monte Carlo (|z| < 4) and the interval propagation holds the
    measurement (>= 90 % of stage-rho pairs on every model: reproduced; < 75 % on one: not reproduced)."""
    relu = tables[next(iter(tables))]["relu"]
    worst = max(abs(r["z"]) for r in relu)
    cover = {m: (sum(bool(r["inside"]) for r in t["intervals"]), len(t["intervals"])) for m, t in tables.items()}
    fractions = [a / b for a, b in cover.values() if b]
    if worst >= 4:
        verdict, reason = "not reproduced", "ReLU closed form differs from Monte Carlo"
    elif fractions and min(fractions) >= 0.9:
        verdict, reason = "reproduced", "closed form matches; >= 90 % of intervals hold the measurement"
    elif fractions and min(fractions) < 0.75:
        verdict, reason = "not reproduced", "closed form matches; the interval propagation misses > 25 % on a model"
    else:
        verdict, reason = "inconclusive", "closed form matches; interval coverage between 75 and 90 %"
    return {"claim": 5, "experiment": "theory",
            "statement": "ReLU closed form (Thm 5.1); interval propagation across layers brackets the measurement",
            "measured": f"ReLU: max |z| closed form vs Monte Carlo {worst:.2f}; intervals holding the measurement: "
                        + ", ".join(f"{m} {a}/{b}" for m, (a, b) in cover.items()),
            "verdict": verdict, "reason": reason}


def influence_claim(found: list[tuple[Path, dict]]) -> dict:
    """Claim 6: few tokens carry most of the influence (a junta of <= 10 % of the positions) and stability
    gives a tighter Fourier-tail bound than influence (ratio > 1), from nsrun-influence summaries."""
    parts, ok = [], []
    for d, s in found:
        parts.append(f"{s.get('model', d.name)}: junta {s['junta_size']} of {s['n_resampleable']} positions "
                     f"(90 % of influence), first/last shares {s['first_share']:.2f}/{s['last_share']:.2f}, "
                     f"bound ratio influence/stability {s['bound_ratio']:.1f}x")
        ok.append(s["junta_size"] <= 0.1 * s["n_resampleable"] and s["bound_ratio"] > 1)
    verdict = "inconclusive" if not found else "reproduced" if all(ok) else "not reproduced"
    return {"claim": 6, "experiment": "influence",
            "statement": "few tokens carry most influence; stability gives a 2-9x tighter Fourier-tail bound",
            "measured": "; ".join(parts) or "no influence result found (run nsrun-influence)",
            "verdict": verdict,
            "reason": "rule: junta <= 10 % of positions and a tighter stability bound" if found else "no data"}


MAP_REASONS = {"faster": "interval of fewer steps above 0", "slower": "interval of fewer steps below 0",
               "no difference": "interval of fewer steps holds 0", "undetermined": "interval of fewer steps undefined"}


def map_claims(mr: MapRuns, experiment: str) -> list[dict]:
    """Claim 1 of ``experiment`` over the map (docs/map.md): for each sign of the map's grid, its best
    cell (:func:`nsrun.analysis.maps.best_cell`) against the map's baseline, steps to the onset, fewer steps and
    wall-clock speedup with their intervals, and the map's verdict (:func:`~nsrun.analysis.maps.cell_verdict`:
    faster / slower / no difference / undetermined). One row saying what is missing when the map has not run."""
    spec, grid = mr.spec, mr.spec.grid
    grid_cells = [c for c in mr.with_role("grid") if not any(k in c.values for k in EXTRA_KEYS)]
    missing = [what for what, found in (("baseline", mr.baseline), ("grid", grid_cells)) if not found]
    if grid is None or missing:
        why = ("it has no grid" if grid is None else "it has not run: no finished runs" if len(missing) == 2
               else f"no finished {missing[0]} runs yet")
        return [{"claim": 1, "experiment": experiment, "statement": f"over the map ({spec.name}), the best cell of "
                 "each sign", "measured": f"{spec.name}: {why} in {spec.root} (make map; docs/map.md)",
                 "verdict": "", "reason": ""}]
    level, seeds = spec.rule.level, selection_seeds(spec)
    chosen = f"seeds {', '.join(map(str, sorted(seeds)))}" if seeds else "every seed"
    base = mr.baseline.stats[level]
    rows = []
    for sign in grid.panel.values:
        which = f"{grid.panel.key}={override_text(sign)}"
        pool = [c for c in grid_cells if same_value(c.values.get(grid.panel.key), sign)]
        of = f"{len(pool)} of the grid's {len(grid.rows.values) * len(grid.cols.values)} cells with {which} have runs"
        row = {"claim": 1, "experiment": experiment,
               "statement": f"over the map ({spec.name}), the grid's best cell with {which} reaches the onset "
                            f"({spec.rule.describe()}) in fewer steps than the map's baseline",
               "measured": f"no cell reaches the onset in most of {chosen} ({of})", "verdict": "", "reason": ""}
        cell = best_cell(mr, sign)
        if cell is not None:
            s = cell.stats[level]
            vs, secs = s.vs_steps, s.vs_seconds
            row["verdict"] = cell_verdict(vs.fewer_ci)
            row["measured"] = (f"{cell.label} ({s.n} seeds; {of}): {fmt_interval(*s.steps)} vs baseline "
                               f"{fmt_interval(*base.steps)} steps; "
                               f"{fmt_interval(vs.fewer, *vs.fewer_ci, 1, pct=True)} fewer steps; wall-clock "
                               f"speedup {fmt_interval(secs.speedup, *secs.speedup_ci, 2, unit='x')}")
            row["reason"] = (f"{MAP_REASONS[row['verdict']]}; in training seconds: {cell_verdict(secs.fewer_ci)}; "
                             f"chosen on {chosen}, which its interval includes (optimistic)")
            if row["verdict"] in ("no difference", "undetermined"):
                settle = seeds_needed(onset_values(cell.runs), onset_values(mr.baseline.runs))
                row["reason"] += f"; seeds per arm to settle (power 0.8): {fmt_seeds(settle)}"
        rows.append(row)
    return rows
