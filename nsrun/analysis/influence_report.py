"""Tables (rich), CSV files and figures (matplotlib) of an influence analysis, and the comparison across models."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from nsrun.science.influence.analysis import InfluenceResult
from nsrun.science.influence.fourier import stability_bound

SUMMARY_JSON = "summary.json"
SUMMARY_COLUMNS = (
    "model", "output", "n_inputs", "seq_len", "total_influence", "total_influence_stderr", "junta_size",
    "junta_size_per_input_median", "first_share", "last_share", "self_moment", "k", "influence_bound",
    "stability_bound", "best_rho", "bound_ratio", "influence_bound_literal", "stability_bound_literal",
    "best_rho_literal", "bound_ratio_literal",
)
# the paper's Table 1: W_{>=k} bound from average sensitivity -> from noise stability (SCIENCE.md claim 6)
PAPER_BOUNDS = {"GPT-2": (0.003, 0.0005), "BERT": (0.04, 0.02), "RoBERTa": (0.19, 0.02), "Gemma": (0.043, 0.0157)}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)


def position_rows(result: InfluenceResult) -> list[dict]:
    """Per position: mean Inf_i over inputs, its stderr and quantiles, and whether it may be resampled."""
    per_input = result.per_input.double()
    n = per_input.shape[0]
    stderr = per_input.std(0) / n**0.5 if n > 1 else torch.full_like(per_input[0], float("nan"))
    quantiles = torch.quantile(per_input, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64), dim=0)
    return [{"position": i, "resampleable": bool(result.resample_mask[i]),
             "influence_mean": float(per_input[:, i].mean()),
             "influence_stderr": float(stderr[i]), "q10": float(quantiles[0, i]), "q25": float(quantiles[1, i]),
             "median": float(quantiles[2, i]), "q75": float(quantiles[3, i]), "q90": float(quantiles[4, i])}
            for i in range(per_input.shape[1])]


def summary_table(summaries: Sequence[dict], title: str = "Junta-like input dependence"):
    """A rich table, one row per model."""
    from rich.table import Table

    table = Table(title=title)
    for name in ("model", "output", "N x L", "AS = sum Inf_i", "junta", "first / last share", "E||f||^2",
                 "W>=k bound: influence", "W>=k bound: stability (rho)", "ratio", "ratio (literal)"):
        table.add_column(name, justify="left" if name in ("model", "output") else "right")
    for s in summaries:
        table.add_row(
            s["model"], s["output"], f"{s['n_inputs']} x {s['seq_len']}",
            f"{s['total_influence']:.4g} ± {s['total_influence_stderr']:.2g}",
            f"{s['junta_size']} of {s['n_resampleable']} ({s['junta_fraction']:.0%})",
            f"{s['first_share']:.3f} / {s['last_share']:.3f}", f"{s['self_moment']:.4g}",
            f"{s['influence_bound']:.3g} (k={s['k']})", f"{s['stability_bound']:.3g} ({s['best_rho']:g})",
            f"{s['bound_ratio']:.2f}x", f"{s['bound_ratio_literal']:.2f}x",
        )
    return table


def render_text(renderable, width: int = 160) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def plot_influence_by_position(result: InfluenceResult, path: Path, title: str) -> None:
    """Inf_i against position: mean over inputs, interquartile band and 10-90 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = position_rows(result)
    keep = [r for r in rows if r["resampleable"]]
    pos = [r["position"] for r in keep]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.fill_between(pos, [r["q10"] for r in keep], [r["q90"] for r in keep], alpha=0.15, color="C0",
                    label="10-90 % over inputs", step="mid")
    ax.fill_between(pos, [r["q25"] for r in keep], [r["q75"] for r in keep], alpha=0.3, color="C0",
                    label="25-75 %", step="mid")
    ax.plot(pos, [r["influence_mean"] for r in keep], color="C0", lw=1.2, label="mean")
    junta = result.junta_positions()
    ax.scatter(junta, [rows[i]["influence_mean"] for i in junta], color="C3", s=14, zorder=3,
               label=f"junta ({len(junta)} positions, {result.junta_fraction:.0%} of AS)")
    ax.set_yscale("log")
    ax.set_xlabel("position")
    ax.set_ylabel(r"$\mathrm{Inf}_i = E\,\|f(x) - f(x^{(i)})\|^2$")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_sorted_influence(result: InfluenceResult, path: Path, title: str) -> None:
    """Mean Inf_i sorted in decreasing order, with the cumulative share and the junta cut."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = torch.sort(result.mean[result.resample_mask], descending=True).values.double()
    share = torch.cumsum(values, 0) / values.sum()
    size = len(result.junta_positions())
    rank = torch.arange(1, len(values) + 1)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.bar(rank, values, width=1.0, color="C0")
    ax.set_yscale("log")
    ax.set_xlabel("rank of position")
    ax.set_ylabel(r"mean $\mathrm{Inf}_i$")
    twin = ax.twinx()
    twin.plot(rank, share, color="C1")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("cumulative share of AS", color="C1")
    ax.axvline(size + 0.5, color="C3", ls="--")
    twin.axhline(result.junta_fraction, color="C3", ls=":", lw=0.8)
    ax.text(size + 1, values[0], f" junta = {size}", color="C3", va="top")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_bounds_vs_rho(result: InfluenceResult, path: Path, title: str) -> None:
    """The stability bound at each rho beside the influence bound (both on W_{>=k} / E||f||^2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result.summary()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(result.rhos, result.stability_bounds(), "o-", label=r"stability bound, $1 - r^k$")
    ax.axhline(summary["influence_bound"], color="C1", ls="--", label=r"influence bound $AS / 2k$")
    literal = [stability_bound(s.mean, result.self_moment, rho, result.k, literal=True)
               for s, rho in zip(result.stability, result.rhos, strict=True)]
    ax.plot(result.rhos, literal, "o:", color="0.6", label=r"literal: $1 - \rho^k$ (not a bound)")
    ax.axhline(summary["influence_bound_literal"], color="0.6", ls="-.", label=r"literal: $AS / k$")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\rho$ (token noise; correlation $r = (1+\rho)/2$)")
    ax.set_ylabel(rf"bound on $W_{{\geq {result.k}}} / E\|f\|^2$")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_bound_bars(summaries: Sequence[dict], path: Path, paper: bool = False) -> None:
    """Influence bound and stability bound side by side for each model (and the paper's Table 1 if asked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s["model"] for s in summaries]
    influence = [s["influence_bound"] for s in summaries]
    stability = [s["stability_bound"] for s in summaries]
    if paper:
        for name, (a, b) in PAPER_BOUNDS.items():
            labels.append(f"{name}\n(paper)")
            influence.append(a)
            stability.append(b)
    x = torch.arange(len(labels)).double()
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 2.5, 3.8))
    ax.bar(x - 0.2, influence, width=0.4, label=r"from influence: $I[f]/k$")
    ax.bar(x + 0.2, stability, width=0.4, label=r"from stability: $\min_\rho (E\|f\|^2 - Stab_\rho)/(1 - r^k)$")
    for xi, a, b in zip(x.tolist(), influence, stability, strict=True):
        ax.text(xi, max(a, b), f"{a / b:.1f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x.tolist(), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(r"bound on $W_{\geq k} / E\|f\|^2$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_report(result: InfluenceResult, out_dir: Path, meta: dict) -> dict:
    """Write the CSVs, summary.json, table.txt and the figures into ``out_dir``; return the summary row."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**meta, **result.summary()}
    with open(out_dir / SUMMARY_JSON, "w") as fh:
        json.dump(summary, fh, indent=2)
    write_csv(out_dir / "summary.csv", [{k: summary[k] for k in SUMMARY_COLUMNS}])
    write_csv(out_dir / "influence.csv", position_rows(result))
    write_csv(out_dir / "stability.csv", result.stability_rows())
    write_csv(out_dir / "influence_per_input.csv",
              [{"input": n, **{str(i): float(v) for i, v in enumerate(row)}} for n, row in enumerate(result.per_input)])
    (out_dir / "table.txt").write_text(render_text(summary_table([summary])))
    title = f"{summary['model']} ({summary['output']}), N = {summary['n_inputs']}, L = {summary['seq_len']}"
    plot_influence_by_position(result, out_dir / "influence_by_position.png", title)
    plot_sorted_influence(result, out_dir / "influence_sorted.png", title)
    plot_bounds_vs_rho(result, out_dir / "bounds_vs_rho.png", title)
    plot_bound_bars([summary], out_dir / "bounds.png")
    return summary


def load_summaries(run_dirs: Sequence[Path]) -> list[dict]:
    return [json.loads((Path(d) / SUMMARY_JSON).read_text()) for d in run_dirs]
