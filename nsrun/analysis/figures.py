"""Every figure of nsrun's analysis (matplotlib, Agg): the onset curves of groups of runs (nsrun-compare's
overlay and the reproduction's figures 1-3), stability vs validation loss (figure 4), theory vs measurement
(nsrun-theory's two figures and the reproduction's figure 5), the influence figure (figure 6), the map's
heatmaps and the exact degree weights over training.

Each ``plot_*`` function returns the matplotlib figure; :func:`save` writes it and closes it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nsrun.analysis.stats import median, spearman
from nsrun.science.onsets import OnsetRule, curve


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: Path, stem: str, formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Write ``out/STEM.FORMAT`` for each format and close the figure."""
    paths = [out / f"{stem}.{fmt}" for fmt in formats]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return paths


def cycle_colours(groups) -> dict[str, str]:
    """Group key -> a colour of matplotlib's default cycle, in group order."""
    colours = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    return {g.key: colours[i % len(colours)] for i, g in enumerate(groups)}


def plot_onset_curves(groups, rule: OnsetRule, stab_key: str | None, title: str,
                      colour: Callable | None = None, label: Callable | None = None, onset_text: str | None = None):
    """The onset metric, validation loss (when the onset is read from accuracy) and stability vs step: one
    colour per group (``colour(group)``, default matplotlib's cycle), seeds as thin lines, each seed's onset
    marked (o), its stability onset (v), the group's median onset dashed, the onset level dotted.
    ``onset_text``: what the onset is, for the title (default: the rule's level, held for good)."""
    plt = pyplot()
    cycle = cycle_colours(groups)
    colour = colour or (lambda g: cycle[g.key])
    label = label or (lambda g: g.label)
    panels = [rule.metric] + (["val_loss"] if rule.metric != "val_loss" else []) + ([stab_key] if stab_key else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.5 * len(panels)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for g in groups:
        c = colour(g)
        for i, r in enumerate(g.runs):
            for ax, key in zip(axes, panels, strict=True):
                steps, values = curve(r.rows, key)
                ax.plot(steps, values, color=c, lw=0.7, alpha=0.6,
                        label=f"{label(g)} (n={len(g.runs)})" if i == 0 and key == panels[0] else None)
                mark = r.onsets.stab_onset_step if key == stab_key else r.onsets.onset_step
                if mark is not None and mark in steps:
                    ax.plot([mark], [values[steps.index(mark)]], "v" if key == stab_key else "o", color=c, ms=4)
        m = g.stats.steps[0] if g.stats is not None else math.nan
        if math.isfinite(m):
            for ax in axes:
                ax.axvline(m, color=c, ls="--", lw=1)
    axes[0].axhline(rule.level, color="grey", ls=":", lw=1)
    for ax, key in zip(axes, panels, strict=True):
        ax.set_ylabel(key, fontsize=8)
        if key == "val_loss" and rule.metric != "val_loss":
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    axes[0].legend(fontsize=7, loc="best")
    onset_text = onset_text or f"{rule.metric} {rule.comparison} {rule.level:g} for good"
    fig.suptitle(textwrap.fill(f"{title}; o onset ({onset_text}), v stability onset, dashed: median onset", 110),
                 fontsize=8)
    fig.tight_layout()
    return fig


def plot_correlation(panels: list[tuple[str, str | None, list]], colour: Callable, label: Callable):
    """Figure 4: stability vs validation loss over training, one panel per ``(title, stability key, groups)``,
    one line per run, with the median over runs of the Spearman correlation in the panel's title."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, key, groups) in zip(axes[0], panels, strict=True):
        rhos = []
        for g in groups:
            for i, r in enumerate(g.runs):
                pairs = [(row[key], row["val_loss"]) for row in r.rows
                         if row.get(key) is not None and row.get("val_loss") is not None]
                if not pairs:
                    continue
                s, v = zip(*pairs, strict=True)
                rhos.append(spearman(s, v))
                ax.plot(v, s, "-", color=colour(g), lw=0.6, alpha=0.5, label=label(g) if i == 0 else None)
        ax.set_xscale("log")
        ax.set_xlabel("validation loss")
        ax.set_ylabel(key, fontsize=8)
        rho = median([x for x in rhos if not math.isnan(x)]) if rhos else math.nan
        ax.set_title(f"{title}: median Spearman {rho:+.2f}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Figure 4: stability vs validation loss over training (one line per run)", fontsize=9)
    fig.tight_layout()
    return fig


def _relu_panel(ax, relu_rows: list[dict], title: str) -> None:
    from nsrun.science.stability import theory

    grid = np.linspace(0, 1, 201)
    ax.plot(grid, theory.relu_kernel(grid), label="closed form k(rho) (Thm 5.1)")
    ax.errorbar([r["rho"] for r in relu_rows], [r["monte_carlo"] for r in relu_rows],
                yerr=[2 * r["stderr"] for r in relu_rows], fmt="o", label="Monte Carlo ± 2 se")
    ax.set(xlabel="rho", ylabel="E[ReLU(X) ReLU(Y)]", title=title)
    ax.legend(fontsize=7)


def plot_theory(tables: dict):
    """nsrun-theory's ``theory.png``: the ReLU closed form vs Monte Carlo, the layer recurrence (unnormalised,
    normalised, a random ReLU network) and attention on Gaussian tokens (Theorems 5.2/5.3)."""
    import torch

    from nsrun.science.stability import theory

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _relu_panel(axes[0], tables["relu"], "ReLU (unnormalised)")
    rec = tables["recurrence"]
    layers = [r["layer"] for r in rec]
    axes[1].plot(layers, [r["unnormalised"] for r in rec], "o-", label="unnormalised k")
    axes[1].plot(layers, [r["normalised"] for r in rec], "s-", label="normalised 2k")
    axes[1].plot(layers, [r["relu_net_mc"] for r in rec], "x--", label="random ReLU net (normalised), MC")
    axes[1].axhline(theory.relu_fixed_point(), color="grey", lw=0.8, ls=":")
    axes[1].set(xlabel="layer L", ylabel="rho_L", title=f"ReLU recurrence from rho_0 = {tables['rho0']:g}")
    axes[1].legend()
    grid = np.linspace(0, 1, 201)
    att = tables["attention"]
    axes[2].plot(grid, [theory.attention_identity_prediction(r, torch.eye(1)).item() for r in grid],
                 label="identity W: rho (per unit ||W_V||^2)")
    rhos = [r["rho"] for r in att]
    for key, style, text in (("identity_mc", "o", "MC, W = I"), ("random_pred", "s-", "random W: rho s(rho)"),
                             ("random_mc", "x", "MC, random W")):
        axes[2].plot(rhos, [r[key] / r["wv_norm2"] for r in att], style, label=text)
    axes[2].set(xlabel="rho", ylabel="stability / ||W_V||^2", title="attention (Thm 5.2/5.3)")
    axes[2].legend()
    fig.tight_layout()
    return fig


def plot_intervals(rows: list[dict], what: str):
    """nsrun-theory's ``intervals.png``: per rho, the predicted interval of each stage beside the measurement."""
    plt = pyplot()
    rhos = list(dict.fromkeys(r["rho"] for r in rows))
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, axes = plt.subplots(1, len(rhos), figsize=(3.2 * len(rhos) + 1, 4.2), sharey=True, squeeze=False)
    for ax, rho in zip(axes[0], rhos, strict=True):
        sel = [r for r in rows if r["rho"] == rho]
        pos = np.arange(len(sel))
        lo = np.array([r["norm_lower"] for r in sel])
        hi = np.array([r["norm_upper"] for r in sel])
        ax.bar(pos, hi - lo, bottom=lo, width=0.6, alpha=0.35, label="predicted interval")
        ax.plot(pos, [r["norm_measured"] for r in sel], "ko", ms=4, label="Monte Carlo")
        ax.set_xticks(pos, stages, rotation=70, fontsize=7)
        ax.set_title(f"rho = {rho:g}")
    axes[0][0].set_ylabel("E[h(X).h(Y)] / E[h(X).h(X)]  (normalised)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"interval propagation vs measurement: {what}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_theory_summary(tables: dict[str, dict]):
    """Figure 5: ReLU closed form vs Monte Carlo; predicted interval vs measured normalised cross moment per
    stage of a random and a trained model (rho = 0.25 and 0.5). ``tables``: model ("random", "trained") ->
    the tables of :func:`nsrun.analysis.theory.theory_tables`."""
    plt = pyplot()
    models = [m for m in ("random", "trained") if m in tables]
    fig, axes = plt.subplots(1, 1 + len(models), figsize=(4.5 + 5.5 * len(models), 4.2), squeeze=False)
    axes = axes[0]
    _relu_panel(axes[0], tables[models[0]]["relu"], "single ReLU unit")
    for ax, model in zip(axes[1:], models, strict=True):
        rows = tables[model]["intervals"]
        stages = list(dict.fromkeys(r["stage"] for r in rows))
        pos = np.arange(len(stages))
        for offset, rho, c in ((-0.2, 0.25, "tab:red"), (0.2, 0.5, "tab:blue")):
            sel = {r["stage"]: r for r in rows if abs(r["rho"] - rho) < 1e-9}
            lo = np.array([sel[s]["norm_lower"] for s in stages])
            hi = np.array([sel[s]["norm_upper"] for s in stages])
            ax.bar(pos + offset, np.maximum(hi - lo, 0.004), bottom=lo, width=0.35, alpha=0.35, color=c,
                   label=f"predicted interval, rho {rho:g}")
            ax.plot(pos + offset, [sel[s]["norm_measured"] for s in stages], "o", color=c, ms=4,
                    label=f"measured, rho {rho:g}")
        inside = sum(bool(r["inside"]) for r in rows)
        ax.set_xticks(pos, stages, rotation=70, fontsize=7)
        ax.set_ylabel("E[h(X).h(Y)] / E[h(X).h(X)]", fontsize=8)
        ax.set_title(f"{model} model: {inside}/{len(rows)} stage-rho pairs inside (all rhos)", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("Figure 5: theory vs measurement (interval propagation is our construction; see docs)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_influence(images: list[Path], bars: Path):
    """Figure 6: nsrun-influence's per-position influence figure(s) beside its bound bars (``bars``)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(images) + 1, figsize=(6 * (len(images) + 1), 4), squeeze=False)
    for ax, image in zip(axes[0], [*images, bars], strict=True):
        ax.imshow(plt.imread(image))
        ax.axis("off")
    fig.suptitle("Figure 6: per-token influence of a pretrained model (nsrun-influence) and the Fourier-tail bounds",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_heatmaps(panels: list[dict], title: str, colour_label: str):
    """The map's heatmaps (nsrun/analysis/map_report.py), one panel per dict: ``title``, ``rows`` / ``cols``
    (tick labels) with ``row_label`` / ``col_label``, ``values`` (a fraction per cell, e.g. fewer steps vs the
    baseline: clipped to [-1, 1], -inf (never reaches the onset) at -1, NaN (no runs or undefined) grey),
    ``text`` (what each cell says) and ``marks`` (True: a thick outline, the 95 % interval excludes 0)."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1, 4.4), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("RdBu").with_extremes(bad="lightgrey")
    image = None
    for ax, p in zip(axes[0], panels, strict=True):
        values = np.clip(np.asarray(p["values"], dtype=float), -1, 1)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-1, vmax=1, origin="lower", aspect="auto")
        for i, row in enumerate(p["text"]):
            for j, text in enumerate(row):
                dark = abs(values[i][j]) > 0.6  # NaN: False
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
                if p["marks"][i][j]:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="black"))
        ax.set_xticks(range(len(p["cols"])), p["cols"])
        ax.set_yticks(range(len(p["rows"])), p["rows"])
        ax.set(xlabel=p["col_label"], ylabel=p["row_label"], title=p["title"])
    fig.colorbar(image, ax=list(axes[0]), label=colour_label, shrink=0.9)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_degree_weights(arms: dict[str, list], normalised: bool = True, log: bool = True, title: str = ""):
    """One panel per arm (``{arm: [DegreeCurves of its runs]}``, :mod:`nsrun.analysis.degree_weights`): the
    Efron-Stein weight of each degree vs step (its fraction of the total when ``normalised``), one colour per
    degree, one line style per run, each run's onset a grey vertical line in its style."""
    plt = pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(arms), figsize=(4.6 * len(arms), 3.8), squeeze=False, sharey=True)
    for ax, (arm, runs) in zip(axes[0], arms.items(), strict=True):
        for i, run in enumerate(runs):
            style = styles[i % len(styles)]
            values = run.fractions if normalised else run.weights
            for d in range(values.shape[1]):
                ax.plot(run.steps, values[:, d], style, color=colours[d % len(colours)], lw=1,
                        label=f"degree {d}" if i == 0 else None)
            if run.onset is not None:
                ax.axvline(run.onset, color="grey", ls=style, lw=1, label=f"onset, {run.label}")
            else:
                ax.plot([], [], style, color="grey", lw=1, label=f"{run.label}: no onset")
        if log:
            ax.set_yscale("log")
        ax.set(xlabel="step", title=f"{arm} (n={len(runs)})")
        ax.legend(fontsize=6, loc="best")
    axes[0][0].set_ylabel(r"$W^{=d} / E\|f\|^2$ (uniform inputs)" if normalised else r"$W^{=d}$ (uniform inputs)")
    fig.suptitle(title or "Efron-Stein weight by degree over training (exact, all inputs)", fontsize=9)
    fig.tight_layout()
    return fig
