"""The cost map: steps to the onset against what a regularised step costs, and where fewer steps become fewer
seconds.

For each cell of a map (one setting's seeds) the step price ``c = s_cell / s_baseline`` is measured side by side in
one process (:func:`nsrun.commands.map.side_by_side_cell_seconds`), the training seconds to the onset are
``onset step x s_cell``, and the wall-clock speedup is ``median(baseline seconds) / median(cell seconds)`` with a
percentile-bootstrap interval (the two groups resampled independently). A cell is faster in wall-clock time only
when that interval lies above 1. Break-even: a cell at price ``c`` needs fewer than ``T_base / c`` steps, with
``T_base`` the baseline's median steps to the onset; the figure draws that curve.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from nsrun.analysis.maps import EXTRA_KEYS, Cell, MapRuns, cell_verdict, step_price
from nsrun.analysis.report import fmt_interval

NAN3 = (math.nan, math.nan, math.nan)
COLUMNS = ("map", "cell", "reg.S", "reg.gamma", "reg.rho", "reg.batch_fraction", "reg.every_k_steps", "n",
           "n_reached", "steps_median", "steps_low", "steps_high", "cost", "seconds_median", "seconds_low",
           "seconds_high", "fewer_steps", "fewer_steps_low", "fewer_steps_high", "speedup", "speedup_low",
           "speedup_high", "verdict_steps", "verdict_seconds")


@dataclass(frozen=True)
class CostPoint:
    """One cell of the cost map: how many steps it needs, what a step costs, and the seconds that makes."""

    map: str
    label: str
    values: dict  # the cell's coordinates (reg.S, reg.gamma, reg.rho and the levers that differ from default)
    n: int
    n_reached: int
    steps: tuple[float, float, float]  # median steps to the onset [95 % CI]; inf: not reached
    cost: float  # seconds per step / the baseline's, side by side
    seconds: tuple[float, float, float]  # median training seconds to the onset [95 % CI]
    fewer_steps: tuple[float, float, float]  # 1 - cell / baseline median steps [95 % CI]
    speedup: tuple[float, float, float]  # baseline / cell median seconds [95 % CI]
    is_baseline: bool = False

    @property
    def verdict_steps(self) -> str:
        return "-" if self.is_baseline else cell_verdict(self.fewer_steps[1:])

    @property
    def verdict_seconds(self) -> str:
        lo, hi = self.speedup[1:]
        return "-" if self.is_baseline else cell_verdict((lo - 1, hi - 1))

    def value(self, key: str):
        return self.values.get(key, EXTRA_KEYS.get(key, "-"))


def cost_point(cell: Cell, mr: MapRuns) -> CostPoint:
    s, base = cell.stats[mr.spec.rule.level], mr.baseline
    price = step_price(mr.step_seconds, cell.label, cell.runs[0])
    base_price = step_price(mr.step_seconds, base.label, base.runs[0]) if base is not None else None
    vs_steps, vs_seconds = s.vs_steps, s.vs_seconds
    return CostPoint(
        map=mr.spec.name, label=cell.label, values=dict(cell.values), n=s.n, n_reached=s.n_reached,
        steps=s.steps, cost=price / base_price if price and base_price else math.nan, seconds=s.seconds,
        fewer_steps=(vs_steps.fewer, *vs_steps.fewer_ci) if vs_steps else NAN3,
        speedup=(vs_seconds.speedup, *vs_seconds.speedup_ci) if vs_seconds else NAN3,
        is_baseline=cell is base)


def cost_points(mr: MapRuns) -> list[CostPoint]:
    """Every cell of ``mr`` with runs: the baseline, then the cells at full cost, then the levers, each by sign,
    gamma and rho (numerically)."""
    return sorted((cost_point(c, mr) for c in mr.cells if c.runs), key=order)


def order(p: CostPoint) -> tuple:
    def num(key: str) -> float:
        v = p.value(key)
        return float(v) if isinstance(v, (int, float)) else math.inf

    fraction, every_k = num("reg.batch_fraction"), num("reg.every_k_steps")
    at_full_cost = fraction == 1.0 and every_k == 1
    return (not p.is_baseline, not at_full_cost, num("reg.S"), -fraction, every_k, num("reg.gamma"), num("reg.rho"))


def answer(points: list[CostPoint]) -> str:
    """The one-paragraph answer: the cells whose wall-clock speedup interval lies above 1, or the frontier."""
    cells = [p for p in points if not p.is_baseline and math.isfinite(p.speedup[0])]
    faster = sorted((p for p in cells if p.speedup[1] > 1), key=lambda p: -p.speedup[1])
    if faster:
        return "; ".join(f"**{p.label}** groks faster in wall-clock time than the baseline, "
                         f"{fmt_speedup(p.speedup)} ({p.n} seeds, a step costs {p.cost:.2f}x)"
                         for p in faster) + "."
    if not cells:
        return "No cell has a wall-clock speedup yet (no cell and baseline both reach the onset)."
    top = sorted(cells, key=lambda p: -p.speedup[0])[:3]
    return ("No cell groks faster in wall-clock time than the baseline with these seeds (no speedup interval lies "
            "above 1). The frontier, by median speedup: " + "; ".join(
                f"{p.label}: {fmt_speedup(p.speedup)}, {fmt_interval(*p.steps)} steps at "
                f"{p.cost:.2f}x a step" for p in top) + ".")


def fmt_speedup(ci: tuple[float, float, float]) -> str:
    """``2.72x [1.51, 3.40]``; an upper end at +inf (the baseline's interval reaches past the horizon) reads
    ``no upper bound``."""
    m, lo, hi = ci
    return f"{m:.2f}x [{lo:.2f}, no upper bound]" if math.isinf(hi) and math.isfinite(m) else fmt_interval(
        m, lo, hi, 2, unit="x")


def fmt_steps(p: CostPoint) -> str:
    return fmt_interval(*p.steps) if math.isfinite(p.steps[0]) else "not reached"


def fmt_vs(p: CostPoint, text: str) -> str:
    """A comparison with the baseline, or why it has no finite ratio: none of the cell's seeds reached the onset."""
    return "none of its seeds reached the onset" if p.n_reached == 0 else text


def markdown(points: list[CostPoint]) -> list[str]:
    head = ["cell", "seeds (reached)", "steps to onset [95 % CI]", "step cost vs baseline", "fewer steps [95 % CI]",
            "wall-clock speedup [95 % CI]", "verdict (steps)", "verdict (seconds)"]
    rows = [[p.label, f"{p.n} ({p.n_reached})", fmt_steps(p), f"{p.cost:.2f}x" if math.isfinite(p.cost) else "-",
             "-" if p.is_baseline else fmt_vs(p, fmt_interval(*p.fewer_steps, 1, pct=True)),
             "-" if p.is_baseline else fmt_vs(p, fmt_speedup(p.speedup)), p.verdict_steps,
             p.verdict_seconds]
            for p in points]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def write_csv(points: list[CostPoint], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for p in points:
            w.writerow([p.map, p.label, *(p.value(k) for k in COLUMNS[2:7]), p.n, p.n_reached, *p.steps, p.cost,
                        *p.seconds, *p.fewer_steps, *p.speedup, p.verdict_steps, p.verdict_seconds])


def write_figure(points: list[CostPoint], title: str, path: Path) -> None:
    """x: a step's cost relative to a plain one; y: steps to the onset (median, 95 % CI); the baseline's band and
    the break-even curve ``steps = baseline median / cost`` (below it: faster in seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    base = next((p for p in points if p.is_baseline), None)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    cells = [p for p in points if not p.is_baseline and math.isfinite(p.cost)]
    finite = [v for p in points for v in p.steps if math.isfinite(v)]
    top = 1.1 * max(finite) if finite else 1.0  # where an open upper end or a cell that never reached is drawn
    if base is not None and math.isfinite(base.steps[0]):
        xs = np.linspace(0.9, max([2.5, *(p.cost * 1.05 for p in cells)]), 200)
        open_end = not math.isfinite(base.steps[2])
        ax.axhspan(base.steps[1], top if open_end else base.steps[2], color="0.85",
                   label="baseline's median steps, 95 % CI" + (" (upper end past the horizon)" if open_end else ""))
        ax.plot(xs, base.steps[0] / xs, "k--", lw=1, label="break-even: steps x cost = baseline's")
        ax.fill_between(xs, 0, base.steps[0] / xs, color="tab:green", alpha=0.07)
    kinds = {"levers": "tab:orange", "S=1": "tab:red", "rho": "tab:purple", "dose": "tab:blue"}
    used = set()
    for p in cells:
        lever = any(k in p.values for k in ("reg.batch_fraction", "reg.every_k_steps"))
        kind = ("S=1" if str(p.values.get("reg.S")) == "1" else "levers" if lever
                else "rho" if str(p.values.get("reg.rho")) != "0.25" else "dose")
        used.add(kind)
        y, lo, hi = p.steps if math.isfinite(p.steps[0]) else (top,) * 3
        hi = hi if math.isfinite(hi) else top
        ax.errorbar(p.cost, y, yerr=[[y - lo], [hi - y]], fmt="o", color=kinds[kind], ms=4, capsize=2, alpha=0.9)
    for kind, colour in kinds.items():
        if kind in used:
            ax.plot([], [], "o", color=colour, label={"dose": "S=0, rho 0.25, gamma series",
                                                      "levers": "S=0, cost levers", "rho": "S=0, rho 0.9",
                                                      "S=1": "S=1 (paper's sign)"}[kind])
    ax.set_xlabel("a regularised step's cost / a plain step's (side by side, one thread)")
    ax.set_ylabel("steps to the onset (median, 95 % CI)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, top * 1.02)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    for suffix in (".png", ".pdf"):
        fig.savefig(path.with_suffix(suffix), dpi=150)
    plt.close(fig)


def write_walltime_report(maps: list[MapRuns], out: Path, header: dict) -> Path:
    """summary.md (the answer, one table per map), cost_map.csv and one figure per map in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# The cost map", "", *(f"- {k}: {v}" for k, v in header.items())]
    every = []
    for mr in maps:
        points = cost_points(mr)
        every += points
        level = mr.spec.rule.level
        lines += ["", f"## {mr.spec.title}", "", answer(points), "", *markdown(points), ""]
        if mr.step_seconds:
            lines.append("Prices (seconds per step, one thread, interleaved in the report's process): " + ", ".join(
                f"{label} {1e3 * s:.2f} ms" for label, s in mr.step_seconds.items()) + ".")
        lines += [f"Onset: {mr.spec.rule.describe()} (level {level:g}).", *(f"- {n}" for n in mr.notes)]
        if points:
            write_figure(points, mr.spec.title, out / f"cost_map_{mr.spec.name}")
            lines += ["", f"![cost map](cost_map_{mr.spec.name}.png)"]
    write_csv(every, out / "cost_map.csv")
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary
