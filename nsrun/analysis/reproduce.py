"""Reproduce the paper's experiments: run the sweeps of ``conf/experiment/``, then the figures and the results table.

    python -m nsrun.analysis.reproduce run --quick   # quick sweeps (local, one job per core), then figures
    python -m nsrun.analysis.reproduce run --launcher submitit_slurm  # the full sweeps on SLURM, then figures
    python -m nsrun.analysis.reproduce figures --quick --out DIR  # figures + summary from run dirs, no training

Each experiment is one Hydra sweep with a fixed sweep directory (``runs/reproduce[-quick]/NAME/reg=...,seed=...``),
so rerunning the same command skips the runs that finished (``DONE``) and resumes the unfinished ones.
Onsets, grouping and bootstrap statistics come from :mod:`nsrun.analysis.onset` and
:mod:`nsrun.analysis.compare`; the theory
figure from :mod:`nsrun.science.stability.theory` through ``nsrun-theory``; the influence figure from the committed
``nsrun-influence`` result (``results/influence/*/summary.json``).
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nsrun.analysis.compare import analyse, choose_baselines, find_runs, fmt_ci, group_runs
from nsrun.analysis.onset import bootstrap_ci, median, median_ci, median_rows, run_onsets, stability_key

PROG = "nsrun-reproduce"
BASELINE = {"reg.name": "none"}
REGULARISED = "stability"
ORDER = ("none", "stability", "grokfast", "weight_decay")
COLOURS = {"none": "tab:blue", "stability": "tab:red", "grokfast": "tab:green", "weight_decay": "tab:purple"}
LABELS = {"none": "baseline", "stability": "stability reg.", "grokfast": "GrokFast", "weight_decay": "weight decay"}
N_BOOT = 10_000
MIN_SEEDS = 3
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


@dataclass(frozen=True)
class Experiment:
    """One figure's sweep: its config (``conf/experiment/NAME[_quick].yaml``) and how its onset is read."""

    name: str
    task: str
    figure: int
    title: str
    onset_key: str           # val_acc (first step from which it stays >= level) or val_loss (stays <= level)
    level: float             # full settings
    quick_level: float       # quick settings
    paper: str               # the paper's number, as text
    paper_fewer: float       # the paper's fraction of fewer steps (claim 1)

    def config(self, quick: bool) -> str:
        return f"{self.name}_quick" if quick else self.name

    def onset_level(self, quick: bool) -> float:
        return self.quick_level if quick else self.level


EXPERIMENTS = {
    "modadd": Experiment("modadd", "modadd", 1, "Modular addition", "val_acc", 0.95, 0.95,
                         "~4500 -> ~3300 steps (26.7 % fewer)", 0.267),
    "parity": Experiment("parity", "parity", 2, "Noisy sparse parity", "val_acc", 0.95, 0.95,
                         "~35 % faster", 0.35),
    "wikitext2": Experiment("wikitext2", "wikitext2", 3, "WikiText-2", "val_loss", 4.0, 4.3,
                            "~75 % faster (target unknown)", 0.75),
}


def sweep_root(quick: bool) -> Path:
    return Path("runs/reproduce-quick" if quick else "runs/reproduce")


# ----------------------------------------------------------------------------------------------- verdicts


def speedup_verdict(fewer_ci: tuple[float, float], reg_median: float, base_median: float, n_reg: int, n_base: int,
                    paper_fewer: float | None = None) -> tuple[str, str]:
    """Claim 1 (fewer steps to the onset): ``(verdict, reason)`` from the bootstrap interval of the fraction
    of fewer steps (1 - regularised / baseline median onset).

    reproduced: the interval lies above 0. not reproduced: it does not, and it excludes the paper's effect
    (its upper end <= 0, or below the paper's fraction). inconclusive: anything else (too few seeds,
    neither group reached the onset, an interval that holds both 0 and the paper's number)."""
    if min(n_reg, n_base) < MIN_SEEDS:
        return "inconclusive", f"fewer than {MIN_SEEDS} seeds per group"
    if math.isinf(reg_median) and math.isinf(base_median):
        return "inconclusive", "neither group reached the onset in most seeds"
    lo, hi = fewer_ci
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive", "interval undefined (too many seeds without an onset)"
    if lo > 0:
        if paper_fewer is not None and hi < paper_fewer:
            return "reproduced", "fewer steps, but a smaller effect than the paper's"
        if paper_fewer is not None and lo > paper_fewer:
            return "reproduced", "fewer steps, a larger effect than the paper's"
        return "reproduced", "fewer steps (95 % interval above 0)"
    if hi <= 0:
        return "not reproduced", "no fewer steps (95 % interval at or below 0)"
    if paper_fewer is not None and hi < paper_fewer:
        return "not reproduced", "interval holds 0 and excludes the paper's effect"
    return "inconclusive", "interval holds 0"


def interval_verdict(ci: tuple[float, float], n: int, positive: str, negative: str) -> tuple[str, str]:
    """A claim that a quantity is > 0: reproduced when its interval lies above 0, not reproduced when it
    lies at or below 0, else inconclusive. ``positive``/``negative`` say what each case means."""
    lo, hi = ci
    if n < MIN_SEEDS:
        return "inconclusive", f"{n} runs with a value (needs {MIN_SEEDS})"
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive", "interval undefined"
    if lo > 0:
        return "reproduced", positive
    if hi <= 0:
        return "not reproduced", negative
    return "inconclusive", "interval holds 0"


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (NaN pairs dropped; ties get the mean rank)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return math.nan

    def ranks(v):
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


# ----------------------------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    """One experiment's runs, grouped by regulariser, with onsets and statistics filled in."""

    exp: Experiment
    quick: bool
    groups: list = field(default_factory=list)
    stab_key: str | None = None
    notes: list = field(default_factory=list)

    def group(self, reg: str):
        return next((g for g in self.groups if g.config.get("reg.name") == reg), None)


def reg_name(group) -> str:
    return str(group.config.get("reg.name", group.label))


def load_experiment(exp: Experiment, sweep_dir: Path, quick: bool, n_boot: int = N_BOOT) -> Loaded | None:
    """The finished runs under ``sweep_dir`` with their onsets (nsrun.analysis.onset) and group statistics
    (nsrun.analysis.compare)."""
    if not sweep_dir.is_dir():
        return None
    runs = find_runs([sweep_dir])
    if not runs:
        return None
    level = exp.onset_level(quick)
    stab = stability_key(set().union(*(r.rows[-1].keys() for r in runs)))
    for r in runs:
        if exp.onset_key == "val_loss":
            r.onsets = run_onsets(r.rows, r.timing, target_loss=level, stability=stab, window=3)
        else:
            r.onsets = run_onsets(r.rows, r.timing, threshold=level, stability=stab, window=3)
    groups, notes = merge_by_regulariser(group_runs(runs))
    groups.sort(key=lambda g: (ORDER.index(reg_name(g)) if reg_name(g) in ORDER else len(ORDER), g.label))
    try:
        baselines = choose_baselines(groups, BASELINE)
    except LookupError:
        baselines = {}
    analyse(groups, baselines, n_boot, 0)
    for note in notes:
        print(f"{PROG}: warning: {exp.name}: {note}", file=sys.stderr)
    return Loaded(exp, quick, groups, stab, notes)


def merge_by_regulariser(groups: list) -> tuple[list, list[str]]:
    """One group per ``reg.name``: an experiment's sweep varies only the regulariser and the seed, so groups
    that nsrun.analysis.compare keeps apart (configs that differ in another key, e.g. a key a task config gained
    between runs) are merged, and each differing key is reported as a note."""
    merged, notes = {}, []
    for g in groups:
        name = reg_name(g)
        if name not in merged:
            merged[name] = g
            continue
        first = merged[name]
        keys = sorted(k for k in set(g.config) | set(first.config) if g.config.get(k) != first.config.get(k))
        diffs = ", ".join(f"{k}: {first.config.get(k)!r} vs {g.config.get(k)!r}" for k in keys)
        notes.append(f"reg={name}: runs {', '.join(str(r.path.name) for r in g.runs)} differ from "
                     f"{', '.join(str(r.path.name) for r in first.runs)} in {diffs}; counted as one group")
        first.runs = sorted(first.runs + g.runs, key=lambda r: (str(r.seed), str(r.path)))
    return list(merged.values()), notes


def curve(run, key: str) -> tuple[list[int], list[float]]:
    steps = [row["step"] for row in run.rows if row.get(key) is not None]
    return steps, [float(row[key]) for row in run.rows if row.get(key) is not None]


def seconds_per_step(run) -> float:
    if not run.timing:
        return math.nan
    last = run.timing[-1]
    return last["train_seconds"] / last["step"] if last.get("step") else math.nan


# ----------------------------------------------------------------------------------------------- summary


def onset_rows(loaded: Loaded) -> list[dict]:
    """One row per group: onsets, fewer steps and speedup vs the baseline, wall-clock, the paper's number, verdict."""
    exp, rows = loaded.exp, []
    base = loaded.group("none")
    base_sps = median([seconds_per_step(r) for r in base.runs]) if base else math.nan
    for g in loaded.groups:
        s, name = g.stats, reg_name(g)
        vs, secs = s.get("vs_steps"), s.get("vs_seconds")
        sps = median([seconds_per_step(r) for r in g.runs])
        row = {"experiment": exp.name, "figure": exp.figure, "group": LABELS.get(name, g.label), "reg": name,
               "onset": f"{exp.onset_key} {'>=' if exp.onset_key == 'val_acc' else '<='} "
                        f"{exp.onset_level(loaded.quick):g}",
               "n_seeds": s["n"], "n_not_reached": s["n"] - s["n_reached"],
               "onset_median": s["steps"][0], "onset_ci_low": s["steps"][1], "onset_ci_high": s["steps"][2],
               "fewer_steps": vs["fewer"] if vs else math.nan,
               "fewer_ci_low": vs["fewer_ci"][0] if vs else math.nan,
               "fewer_ci_high": vs["fewer_ci"][1] if vs else math.nan,
               "speedup": vs["speedup"] if vs else math.nan,
               "speedup_ci_low": vs["speedup_ci"][0] if vs else math.nan,
               "speedup_ci_high": vs["speedup_ci"][1] if vs else math.nan,
               "wallclock_speedup": secs["speedup"] if secs else math.nan,
               "wallclock_speedup_ci_low": secs["speedup_ci"][0] if secs else math.nan,
               "wallclock_speedup_ci_high": secs["speedup_ci"][1] if secs else math.nan,
               "time_per_step_ratio": sps / base_sps if base else math.nan,
               "final_median": median([curve(r, exp.onset_key)[1][-1] for r in g.runs]),
               "final_min": min(curve(r, exp.onset_key)[1][-1] for r in g.runs),
               "final_max": max(curve(r, exp.onset_key)[1][-1] for r in g.runs),
               "paper": "", "verdict": "", "reason": ""}
        if name == REGULARISED and base is not None and vs:
            row["paper"] = exp.paper
            row["verdict"], row["reason"] = speedup_verdict(
                vs["fewer_ci"], s["steps"][0], base.stats["steps"][0], s["n"], base.stats["n"], exp.paper_fewer)
        elif name == "none":
            row["reason"] = "baseline"
        rows.append(row)
    return rows


def lag_claim(loaded: Loaded) -> dict:
    """Claim 2: stability falls during training, and the fall precedes generalisation. First whether it falls
    at all (last minus first logged value per run; an interval above 0 means it rises: not reproduced), then
    the lag = steepest stability fall minus accuracy onset (interval below 0: reproduced)."""
    key = loaded.stab_key
    runs = [r for g in loaded.groups if reg_name(g) in ("none", REGULARISED) for r in g.runs]
    change = [curve(r, key)[1][-1] - curve(r, key)[1][0] for r in runs if key and curve(r, key)[1]]
    norm_key = f"n{key}" if key else None
    norm_change = [curve(r, norm_key)[1][-1] - curve(r, norm_key)[1][0] for r in runs
                   if norm_key and curve(r, norm_key)[1]]
    lags = [float(r.onsets["lag_steps"]) for r in runs if r.onsets.get("lag_steps") is not None]
    m, lo, hi = median_ci(lags, N_BOOT) if lags else (math.nan, math.nan, math.nan)
    c = median_ci(change, N_BOOT) if change else (math.nan, math.nan, math.nan)
    nc = median_ci(norm_change, N_BOOT) if norm_change else (math.nan, math.nan, math.nan)
    measured = (f"{key} last - first: {c[0]:+.3f} [{c[1]:+.3f}, {c[2]:+.3f}]; normalised {norm_key}: "
                f"{nc[0]:+.3f} [{nc[1]:+.3f}, {nc[2]:+.3f}] (n = {len(change)} runs, none and stability); "
                f"lag steepest fall - onset {fmt_ci((m, lo, hi))} steps (n = {len(lags)})")
    if len(change) >= MIN_SEEDS and c[1] > 0:
        verdict, reason = "not reproduced", f"{key} rises over training instead of falling"
    else:
        verdict, reason = interval_verdict((-hi, -lo), len(lags), "the fall precedes the onset (lag < 0)",
                                           "the fall comes at or after the onset (lag >= 0)")
    return {"claim": 2, "experiment": loaded.exp.name,
            "statement": "stability falls during training and the fall precedes the rise of validation accuracy",
            "measured": measured, "verdict": verdict, "reason": reason}


def final_stability_claim(loaded: Loaded) -> dict:
    """Claim 3: the regularised model's stability stays high while the baseline's falls (last eval values)."""
    base, reg = loaded.group("none"), loaded.group(REGULARISED)
    key = loaded.stab_key
    if base is None or reg is None or key is None:
        return {"claim": 3, "experiment": loaded.exp.name, "statement": "regularised stability stays high",
                "measured": "missing groups or stability key", "verdict": "inconclusive", "reason": "no data"}

    def last_and_fall(runs):
        last = [curve(r, key)[1][-1] for r in runs]
        fall = [max(curve(r, key)[1]) - curve(r, key)[1][-1] for r in runs]
        return last, fall

    base_last, base_fall = last_and_fall(base.runs)
    reg_last, reg_fall = last_and_fall(reg.runs)
    diff = median(reg_last) - median(base_last)
    ci = bootstrap_ci([reg_last, base_last], lambda a, b: median_rows(a) - median_rows(b), N_BOOT)
    verdict, reason = interval_verdict(ci, min(len(reg_last), len(base_last)),
                                       "regularised stability ends higher than the baseline's",
                                       "regularised stability ends at or below the baseline's")
    base_peak = median([max(curve(r, key)[1]) for r in base.runs])
    if verdict == "reproduced" and median(base_fall) < 0.1 * base_peak:
        verdict, reason = "inconclusive", ("regularised stability ends higher, but the baseline's does not fall "
                                           "(less than 10 % below its peak) within the run")
    return {"claim": 3, "experiment": loaded.exp.name,
            "statement": "the regularised model's stability stays high while the baseline's falls",
            "measured": f"last {key}: regularised {median(reg_last):.3f} vs baseline {median(base_last):.3f} "
                        f"(difference {diff:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]); fall from its peak: regularised "
                        f"{median(reg_fall):.3f}, baseline {median(base_fall):.3f}",
            "verdict": verdict, "reason": reason}


def correlation_claim(loaded: Loaded) -> dict:
    """Claim 4: stability and validation loss correlate over training (Spearman per run, all groups)."""
    key = loaded.stab_key
    rhos = []
    for g in loaded.groups:
        for r in g.runs:
            pairs = [(row.get(key), row.get("val_loss")) for row in r.rows]
            rhos.append(spearman([a if a is not None else math.nan for a, _ in pairs],
                                 [b if b is not None else math.nan for _, b in pairs]))
    rhos = [x for x in rhos if not math.isnan(x)]
    m, lo, hi = median_ci(rhos, N_BOOT) if rhos else (math.nan, math.nan, math.nan)
    sign = 1 if m >= 0 else -1
    verdict, reason = interval_verdict((sign * lo, sign * hi) if sign > 0 else (-hi, -lo), len(rhos),
                                       f"{'positive' if sign > 0 else 'negative'} correlation, interval excludes 0",
                                       "no consistent correlation")
    return {"claim": 4, "experiment": loaded.exp.name,
            "statement": "stability and validation loss correlate over training",
            "measured": f"Spearman({key}, val_loss) per run: median {m:+.2f} [{lo:+.2f}, {hi:+.2f}], n = {len(rhos)}",
            "verdict": verdict, "reason": reason}


def fmt(v: float, digits: int = 0, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "not reached" if v > 0 else "-inf"
    return f"{100 * v:.{digits}f} %" if pct else f"{v:.{digits}f}"


def fmt_interval(m: float, lo: float, hi: float, digits: int = 0, pct: bool = False, unit: str = "") -> str:
    if isinstance(m, float) and math.isnan(m):
        return "-"
    text = fmt(m, digits, pct) + unit
    if math.isnan(lo) and math.isnan(hi):
        return text
    return f"{text} [{fmt(lo, digits, pct)}, {fmt(hi, digits, pct)}]"


def markdown_onset_table(rows: list[dict]) -> list[str]:
    head = ("experiment", "group", "onset", "seeds (not reached)", "last value, median (min-max)",
            "steps to onset, median [95 % CI]",
            "fewer steps vs baseline [95 % CI]", "speedup (steps)", "speedup (train seconds)",
            "s/step vs baseline", "paper", "verdict")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append("| " + " | ".join([
            r["experiment"], r["group"], r["onset"], f"{r['n_seeds']} ({r['n_not_reached']})",
            f"{r['final_median']:.3f} ({r['final_min']:.3f}-{r['final_max']:.3f})",
            fmt_interval(r["onset_median"], r["onset_ci_low"], r["onset_ci_high"]),
            fmt_interval(r["fewer_steps"], r["fewer_ci_low"], r["fewer_ci_high"], 1, pct=True),
            fmt_interval(r["speedup"], r["speedup_ci_low"], r["speedup_ci_high"], 2, unit="x"),
            fmt_interval(r["wallclock_speedup"], r["wallclock_speedup_ci_low"], r["wallclock_speedup_ci_high"], 2,
                         unit="x"),
            fmt(r["time_per_step_ratio"], 2) + ("x" if not math.isnan(r["time_per_step_ratio"]) else ""),
            r["paper"] or "-", f"**{r['verdict']}** ({r['reason']})" if r["verdict"] else r["reason"] or "-",
        ]).replace("inf %", "inf") + " |")
    return out


def write_onset_csv(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})


def print_tables(rows: list[dict], claims: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    t = Table(title="steps to onset (median [95 % CI] over seeds) vs the paper")
    for c in ("experiment", "group", "seeds (not reached)", "onset", "fewer steps", "speedup (s)", "paper", "verdict"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(r["experiment"], r["group"], f"{r['n_seeds']} ({r['n_not_reached']})",
                  fmt_interval(r["onset_median"], r["onset_ci_low"], r["onset_ci_high"]),
                  fmt_interval(r["fewer_steps"], r["fewer_ci_low"], r["fewer_ci_high"], 1, pct=True),
                  fmt_interval(r["wallclock_speedup"], r["wallclock_speedup_ci_low"], r["wallclock_speedup_ci_high"],
                               2, unit="x"), r["paper"], r["verdict"])
    console.print(t)
    t = Table(title="claims")
    for c in ("claim", "experiment", "measured", "verdict"):
        t.add_column(c, overflow="fold")
    for c in claims:
        t.add_row(str(c["claim"]), c["experiment"], c["measured"], c["verdict"])
    console.print(t)


# ----------------------------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    _plt().close(fig)
    return paths


def plot_experiment(loaded: Loaded, out: Path) -> list[Path]:
    """Figures 1-3: the onset metric, validation loss (accuracy tasks) and stability vs step; one colour per
    group, seeds as thin lines, each seed's onset marked (o), stability onsets (v), group median onset dashed."""
    plt = _plt()
    exp = loaded.exp
    panels = [exp.onset_key] + (["val_loss"] if exp.onset_key != "val_loss" else []) + [loaded.stab_key]
    panels = [p for p in panels if p]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.5 * len(panels)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for g in loaded.groups:
        name = reg_name(g)
        colour = COLOURS.get(name, "grey")
        for i, r in enumerate(g.runs):
            for ax, key in zip(axes, panels, strict=True):
                steps, values = curve(r, key)
                ax.plot(steps, values, color=colour, lw=0.7, alpha=0.6,
                        label=f"{LABELS.get(name, g.label)} (n={len(g.runs)})" if i == 0 else None)
                mark = r.onsets["stab_onset_step"] if key == loaded.stab_key else r.onsets["onset_step"]
                if mark is not None and mark in steps:
                    ax.plot([mark], [values[steps.index(mark)]], "v" if key == loaded.stab_key else "o",
                            color=colour, ms=4)
        m = g.stats["steps"][0]
        if math.isfinite(m):
            for ax in axes:
                ax.axvline(m, color=colour, ls="--", lw=1)
    level = exp.onset_level(loaded.quick)
    axes[0].axhline(level, color="grey", ls=":", lw=1)
    for ax, key in zip(axes, panels, strict=True):
        ax.set_ylabel(key, fontsize=8)
        if key == "val_loss" and exp.onset_key != "val_loss":
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"Figure {exp.figure}: {exp.title}{' (quick settings)' if loaded.quick else ''}; "
                 f"o onset ({panels[0]} {'>=' if exp.onset_key == 'val_acc' else '<='} {level:g} for good), "
                 "v steepest stability fall, dashed: median onset", fontsize=8)
    fig.tight_layout()
    return save(fig, out, f"fig{exp.figure}_{exp.name}")


def plot_correlation(loaded_all: list[Loaded], out: Path) -> list[Path]:
    """Figure 4: stability vs validation loss over training, one panel per task, one colour per group."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(loaded_all), figsize=(4.2 * len(loaded_all), 3.8), squeeze=False)
    for ax, loaded in zip(axes[0], loaded_all, strict=True):
        key = loaded.stab_key
        rhos = []
        for g in loaded.groups:
            name = reg_name(g)
            for i, r in enumerate(g.runs):
                pairs = [(row[key], row["val_loss"]) for row in r.rows
                         if row.get(key) is not None and row.get("val_loss") is not None]
                if not pairs:
                    continue
                s, v = zip(*pairs, strict=True)
                rhos.append(spearman(s, v))
                ax.plot(v, s, "-", color=COLOURS.get(name, "grey"), lw=0.6, alpha=0.5,
                        label=LABELS.get(name, g.label) if i == 0 else None)
        ax.set_xscale("log")
        ax.set_xlabel("validation loss")
        ax.set_ylabel(key, fontsize=8)
        rho = median([x for x in rhos if not math.isnan(x)]) if rhos else math.nan
        ax.set_title(f"{loaded.exp.title}: median Spearman {rho:+.2f}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Figure 4: stability vs validation loss over training (one line per run)", fontsize=9)
    fig.tight_layout()
    return save(fig, out, "fig4_correlation")


THEORY_ARGS = {"full": ["--n-examples", "1024", "--mc-samples", "200000"],
               "quick": ["--n-examples", "256", "--mc-samples", "50000"],
               "smoke": ["--n-examples", "32", "--mc-samples", "2000", "--n-repeats", "1", "--depth", "3"]}


def theory_tables(out: Path, trained_run: Path | None, random_overrides: list[str], level: str = "full") -> dict:
    """Run ``nsrun-theory`` for a random-init model (the experiment's config) and for a trained run; return
    the CSV rows of both (ReLU closed form vs Monte Carlo, intervals per stage). ``level``: THEORY_ARGS key."""
    from nsrun.commands import theory as theory_cli

    common = ["--rhos", "0,0.25,0.5,0.9", *THEORY_ARGS[level]]
    tables = {}
    trained = ["--run", str(trained_run)] if trained_run else None
    for what, extra in (("random", random_overrides), ("trained", trained)):
        if extra is None:
            continue
        folder = out / f"theory_{what}"
        theory_cli.run(theory_cli.parse_args(common + ["--out", str(folder)] + extra))
        tables[what] = {name: _read_csv(folder / f"{name}.csv") for name in ("relu", "intervals")}
    return tables


def _read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(v: str):
    if v in ("True", "False"):
        return v == "True"
    try:
        return float(v)
    except ValueError:
        return v


def plot_theory(tables: dict, out: Path) -> list[Path]:
    """Figure 5: ReLU closed form vs Monte Carlo; predicted interval vs measured normalised cross moment per
    stage of a random and a trained model (rho = 0.25 and 0.5)."""
    from nsrun.science.stability import theory

    plt = _plt()
    models = [m for m in ("random", "trained") if m in tables]
    fig, axes = plt.subplots(1, 1 + len(models), figsize=(4.5 + 5.5 * len(models), 4.2), squeeze=False)
    axes = axes[0]
    relu = tables[models[0]]["relu"]
    grid = np.linspace(0, 1, 201)
    axes[0].plot(grid, theory.relu_kernel(grid), label="closed form (Thm 5.1)")
    axes[0].errorbar([r["rho"] for r in relu], [r["monte_carlo"] for r in relu],
                     yerr=[2 * r["stderr"] for r in relu], fmt="o", label="Monte Carlo ± 2 se")
    axes[0].set(xlabel="rho", ylabel="E[ReLU(X) ReLU(Y)]", title="single ReLU unit")
    axes[0].legend(fontsize=7)
    for ax, model in zip(axes[1:], models, strict=True):
        rows = tables[model]["intervals"]
        stages = list(dict.fromkeys(r["stage"] for r in rows))
        pos = np.arange(len(stages))
        for offset, rho, colour in ((-0.2, 0.25, "tab:red"), (0.2, 0.5, "tab:blue")):
            sel = {r["stage"]: r for r in rows if abs(r["rho"] - rho) < 1e-9}
            lo = np.array([sel[s]["norm_lower"] for s in stages])
            hi = np.array([sel[s]["norm_upper"] for s in stages])
            ax.bar(pos + offset, np.maximum(hi - lo, 0.004), bottom=lo, width=0.35, alpha=0.35, color=colour,
                   label=f"predicted interval, rho {rho:g}")
            ax.plot(pos + offset, [sel[s]["norm_measured"] for s in stages], "o", color=colour, ms=4,
                    label=f"measured, rho {rho:g}")
        inside = sum(bool(r["inside"]) for r in rows)
        ax.set_xticks(pos, stages, rotation=70, fontsize=7)
        ax.set_ylabel("E[h(X).h(Y)] / E[h(X).h(X)]", fontsize=8)
        ax.set_title(f"{model} model: {inside}/{len(rows)} stage-rho pairs inside (all rhos)", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("Figure 5: theory vs measurement (interval propagation is our construction; see README)", fontsize=9)
    fig.tight_layout()
    return save(fig, out, "fig5_theory")


def theory_claim(tables: dict) -> dict:
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


def influence_summaries(results: Path = Path("results/influence")) -> list[tuple[Path, dict]]:
    import json

    return [(p.parent, json.loads(p.read_text())) for p in sorted(results.glob("*/summary.json"))]


def plot_influence(found: list[tuple[Path, dict]], out: Path) -> list[Path]:
    """Figure 6: the influence helper's per-position influence figure(s) beside its bound bars (with Table 1)."""
    from nsrun.influence.report import plot_bound_bars

    plt = _plt()
    bars = out / "fig6_bounds_tmp.png"
    plot_bound_bars([s for _, s in found], bars, paper=True)
    images = [d / "influence_by_position.png" for d, _ in found if (d / "influence_by_position.png").exists()]
    fig, axes = plt.subplots(1, len(images) + 1, figsize=(6 * (len(images) + 1), 4), squeeze=False)
    for ax, image in zip(axes[0], images + [bars], strict=True):
        ax.imshow(plt.imread(image))
        ax.axis("off")
    fig.suptitle("Figure 6: per-token influence of a pretrained model (nsrun-influence) and the Fourier-tail bounds",
                 fontsize=9)
    fig.tight_layout()
    paths = save(fig, out, "fig6_influence")
    bars.unlink()
    return paths


def influence_claim(found: list[tuple[Path, dict]]) -> dict:
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


# ----------------------------------------------------------------------------------------------- the report


def influence_table(found: list[tuple[Path, dict]]) -> list[str]:
    """Markdown: the bounds on the high-degree Fourier weight, ours (nsrun-influence) beside the paper's Table 1."""
    from nsrun.influence.report import PAPER_BOUNDS

    lines = ["| model | inputs x length | junta (90 % of influence) | bound from influence | bound from stability "
             "| ratio |", "|---|---|---|---|---|---|"]
    for d, s in found:
        lines.append(f"| {s.get('model', d.name)} ({d}) | {s['n_inputs']} x {s['seq_len']} | {s['junta_size']} of "
                     f"{s['n_resampleable']} | {s['influence_bound']:.3g} | {s['stability_bound']:.3g} | "
                     f"{s['bound_ratio']:.2f}x |")
    for name, (a, b) in PAPER_BOUNDS.items():
        lines.append(f"| {name} (paper, Table 1) | 256 tokens | 5-10 | {a:g} | {b:g} | {a / b:.1f}x |")
    return lines


def write_summary(out: Path, rows: list[dict], claims: list[dict], figures: list[Path], settings: dict,
                  influence: list | None = None) -> Path:
    """``summary.md`` (tables, verdicts, figures) and ``summary.csv`` / ``claims.csv`` into ``out``."""
    write_onset_csv(rows, out / "summary.csv")
    write_onset_csv(claims, out / "claims.csv")
    lines = ["# Reproduction summary: Noise Stability of Transformer Models (Haris, Zhang, Yoshida, ICLR 2026)", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "## Claim 1: steps to onset, regularised and peers vs baseline", "",
              "Median over seeds with a percentile-bootstrap 95 % interval (10,000 resamples); a seed that never "
              "reaches the onset counts as later than any step. Fewer steps = 1 - group / baseline median; "
              "speedup = baseline / group, in steps and in cumulative training seconds (evaluation excluded); "
              "s/step = median training seconds per step relative to the baseline. Verdict rule (regulariser "
              "only): reproduced when the interval of fewer steps lies above 0; not reproduced when it does "
              "not and it excludes the paper's number (upper end <= 0 or below it); else inconclusive.", ""]
    lines += markdown_onset_table(rows)
    lines += ["", "## Claims 1-6: verdicts", "", "| claim | experiment | statement | measured | verdict |",
              "|---|---|---|---|---|"]
    for r in rows:
        if r["verdict"]:
            fewer = fmt_interval(r["fewer_steps"], r["fewer_ci_low"], r["fewer_ci_high"], 1, pct=True)
            lines.append(f"| 1 | {r['experiment']} | the regulariser reaches the onset in fewer steps (paper: "
                         f"{r['paper']}) | {fewer} fewer steps | **{r['verdict']}** ({r['reason']}) |")
    for c in claims:
        lines.append(f"| {c['claim']} | {c['experiment']} | {c['statement']} | {c['measured']} | "
                     f"**{c['verdict']}** ({c['reason']}) |")
    if influence:
        lines += ["", "## Claim 6: influence and Fourier-tail bounds of a pretrained model (results/influence)", ""]
        lines += influence_table(influence)
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def figures(quick: bool, out: Path, root: Path | None = None, only: list[str] | None = None,
            theory: bool = True, influence: bool = True, n_boot: int = N_BOOT, theory_level: str | None = None) -> int:
    """Figures 1-6 and ``summary.md`` from the run dirs under ``root`` (no training). Returns an exit code.
    ``theory_level``: Monte-Carlo sizes of figure 5 (THEORY_ARGS; default quick or full as ``quick``)."""
    root = root or sweep_root(quick)
    out.mkdir(parents=True, exist_ok=True)
    made, rows, claims, loaded_all = [], [], [], []
    for name in only or list(EXPERIMENTS):
        exp = EXPERIMENTS[name]
        loaded = load_experiment(exp, root / name, quick, n_boot)
        if loaded is None:
            print(f"{PROG}: warning: {root / name}: no finished runs; figure {exp.figure} left out", file=sys.stderr)
            continue
        loaded_all.append(loaded)
        made += plot_experiment(loaded, out)
        rows += onset_rows(loaded)
        if name == "parity":
            claims.append(lag_claim(loaded))
        if name == "wikitext2":
            claims.append(final_stability_claim(loaded))
    if loaded_all:
        made += plot_correlation(loaded_all, out)
        claims += [correlation_claim(x) for x in loaded_all]
    if theory:
        trained = next((r.path for x in loaded_all if x.exp.name == "modadd" for g in x.groups
                        if reg_name(g) == "none" for r in g.runs), None)
        exp_config = EXPERIMENTS["modadd"].config(quick)
        tables = theory_tables(out, trained, [f"+experiment={exp_config}", "reg=none"],
                               theory_level or ("quick" if quick else "full"))
        made += plot_theory(tables, out)
        claims.append(theory_claim(tables))
    found = []
    if influence:
        found = influence_summaries()
        if found:
            made += plot_influence(found, out)
        else:
            print(f"{PROG}: warning: no results/influence/*/summary.json; figure 6 left out "
                  "(run nsrun-influence hydra.run.dir=results/influence/minilm)", file=sys.stderr)
        claims.append(influence_claim(found))
    claims.sort(key=lambda c: c["claim"])
    settings = {"settings": "quick (reduced; see conf/experiment/*_quick.yaml)" if quick else "full",
                "run dirs": str(root), "onset": "first eval step from which the metric stays past the level"}
    for x in loaded_all:
        for note in x.notes:
            settings[f"config note ({x.exp.name})"] = note
    summary = write_summary(out, rows, claims, made, settings, found)
    print_tables(rows, claims)
    print(f"wrote {summary}, {out / 'summary.csv'}, {out / 'claims.csv'} and {len(made)} figure files in {out}")
    return 0 if loaded_all else 2


# ----------------------------------------------------------------------------------------------- running


def prepare_quick_data(dst: Path, src: Path | None = None, train_lines: int = 1000, val_lines: int = 500) -> Path:
    """The quick WikiText-2 data in ``dst``: the first ``train_lines`` lines of valid.txt (training) and the
    first ``val_lines`` of test.txt (evaluation), so that each evaluation of the whole splits stays cheap."""
    from nsrun.influence.text import default_data_dir

    src = src or default_data_dir()
    if src is None or not (Path(src) / "valid.txt").exists():
        raise FileNotFoundError("no offline WikiText-2 (valid.txt, test.txt); set NSRUN_DATA_DIR")
    dst.mkdir(parents=True, exist_ok=True)
    for name, n in (("valid.txt", train_lines), ("test.txt", val_lines)):
        text = "".join((Path(src) / name).read_text().splitlines(keepends=True)[:n])
        if not (dst / name).exists() or (dst / name).read_text() != text:
            (dst / name).write_text(text)
    return dst


def run_sweeps(quick: bool, launcher: str | None, only: list[str], extra: list[str], root: Path | None = None,
               quick_lines: tuple[int, int] = (1000, 500)) -> int:
    """``nsrun -m +experiment=NAME[_quick]`` for each experiment; finished runs are skipped, others resume.
    With ``root`` the sweeps go to ``root/NAME`` instead of the configs' own sweep dirs; ``quick_lines``: lines
    of the quick WikiText-2 training and evaluation files. Returns the number of failed sweeps."""
    nsrun = shutil.which("nsrun")
    base = [nsrun] if nsrun else [sys.executable, "-c", "from nsrun.commands.nsrun import main; main()"]
    failed = 0
    for name in only:
        cmd = [*base, "-m", f"+experiment={EXPERIMENTS[name].config(quick)}"]
        if launcher:
            cmd.append(f"hydra/launcher={launcher}")
        if root is not None:
            cmd.append(f"hydra.sweep.dir={root / name}")
        if quick and name == "wikitext2":
            data = prepare_quick_data((root or sweep_root(True)) / "data" / "wikitext-2", None, *quick_lines)
            cmd.append(f"task.data_dir={data}")
        cmd += extra
        print(f"{PROG}: {' '.join(cmd)}", flush=True)
        start = time.time()
        code = subprocess.call(cmd)
        print(f"{PROG}: {name} exit {code} after {time.time() - start:.0f} s", flush=True)
        failed += code != 0
    return failed


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="Run the paper's experiments and regenerate its figures "
                                "and headline numbers (results/summary.md).")
    sub = p.add_subparsers(dest="command", required=True)
    for command in ("run", "figures"):
        s = sub.add_parser(command, help="run the sweeps, then the figures" if command == "run"
                           else "figures and summary from existing run dirs (no training)")
        s.add_argument("--quick", action="store_true", help="the reduced settings (conf/experiment/*_quick.yaml)")
        s.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated experiments (default: all)")
        s.add_argument("--out", type=Path, default=None,
                       help="where figures and summary.md go (default: results/reproduce[-quick])")
        s.add_argument("--root", type=Path, default=None, help="sweep dirs (default: runs/reproduce[-quick])")
        s.add_argument("--no-theory", action="store_true", help="leave out figure 5")
        s.add_argument("--no-influence", action="store_true", help="leave out figure 6")
        s.add_argument("--n-boot", type=int, default=N_BOOT)
        if command == "run":
            s.add_argument("--launcher", default="local_cores",
                           help="hydra/launcher option (local_cores, submitit_slurm, slurm_cpu, ...; '' = basic)")
            s.add_argument("overrides", nargs="*", help="extra nsrun overrides for every sweep")
    args = p.parse_args(argv)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in args.only if x not in EXPERIMENTS]
    if unknown:
        p.error(f"--only: unknown experiment(s) {', '.join(unknown)}; known: {', '.join(EXPERIMENTS)}")
    if args.out is None:
        args.out = Path("results/reproduce-quick" if args.quick else "results/reproduce")
    return args


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.time()
    code = 0
    if args.command == "run":
        failed = run_sweeps(args.quick, args.launcher or None, args.only, args.overrides, args.root)
        code = 1 if failed else 0
    code = max(code, figures(args.quick, args.out, args.root, args.only, theory=not args.no_theory,
                             influence=not args.no_influence, n_boot=args.n_boot))
    print(f"{PROG}: {args.command} done in {time.time() - start:.0f} s (exit {code})")
    sys.exit(code)


if __name__ == "__main__":
    main()
