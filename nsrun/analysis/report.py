"""Tables of onsets and claims: text cells, csv files, markdown (``compare.md``, ``summary.md``) and rich
tables for the terminal. nsrun-compare's tables are per group of runs (:class:`nsrun.analysis.runs.Group`
with its statistics, :class:`~nsrun.analysis.stats.GroupStats`); the reproduction's are rows of plain dicts
(:mod:`nsrun.analysis.claims`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from nsrun.analysis.seeds_needed import SEEDS_RULE, fmt_seeds, seeds_fields
from nsrun.analysis.stats import Comparison, ComputeTotals
from nsrun.science.onsets import FAILED, UNKNOWN, Onsets

# ----------------------------------------------------------------------------------------------- cells


def fmt_step(v: float) -> str:
    if math.isnan(v):
        return "-"
    return "not reached" if math.isinf(v) else f"{v:.0f}" if v == int(v) else f"{v:.1f}"


def fmt_bound(v: float, digits: int = 0) -> str:
    if math.isnan(v):
        return "?"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}"


def fmt_ci(triple, digits: int = 0, unit: str = "") -> str:
    """``median [low, high]`` (bounds may be ``inf``); ``not reached`` when the median is inf (half or more
    never got there)."""
    m, lo, hi = triple
    if math.isnan(m):
        return "-"
    if math.isinf(m):
        return "not reached" if m > 0 else "-inf"
    if math.isnan(lo) and math.isnan(hi):
        return f"{m:.{digits}f}{unit}"
    return f"{m:.{digits}f}{unit} [{fmt_bound(lo, digits)}, {fmt_bound(hi, digits)}]"


def fmt_versus(c: Comparison | None, group_median: float, base_median: float) -> str:
    """``26.7 % [lo, hi] fewer, 1.36x [lo, hi]`` against the baseline, or why it is undefined."""
    if not c:
        return "-"
    if math.isinf(group_median) and math.isinf(base_median):
        return "n/a: neither reached"
    if math.isinf(group_median):
        return "n/a: not reached"
    if math.isinf(base_median):
        return "n/a: baseline not reached"
    if math.isnan(c.speedup):
        return "-"
    fewer = fmt_ci((100 * c.fewer, 100 * c.fewer_ci[0], 100 * c.fewer_ci[1]), 1, " %")
    return f"{fewer}; {fmt_ci((c.speedup, *c.speedup_ci), 2, 'x')}"


def fmt_compute(c: ComputeTotals) -> str:
    """Early stopping's account of a group (:func:`nsrun.analysis.stats.compute_totals`), e.g. ``2 stopped,
    1 gave up: 4100 steps spared (46 %, ~9.8 s); 12.3 s trained``."""
    trained = f"{fmt_bound(c.train_seconds, 1)} s trained"
    if not c.stopped and not c.gave_up:
        return f"none stopped early; {trained}"
    frac = "?" if math.isnan(c.spared_frac) else f"{100 * c.spared_frac:.0f} %"
    return (f"{c.stopped} stopped, {c.gave_up} gave up: {c.steps_spared} steps spared ({frac}, "
            f"~{c.spared_seconds_est:.1f} s); {trained}")


def fmt_reached(n_reached: int, n: int, n_unknown: int, n_failed: int = 0) -> str:
    """``3/5`` runs reached the onset, ``3/5, 1 unknown`` when a stop rule left some onsets unknown, ``3/5, 1
    failed`` when a run's training failed."""
    return f"{n_reached}/{n}" + (f", {n_unknown} unknown" if n_unknown else "") + (
        f", {n_failed} failed" if n_failed else "")


def fmt(v: float, digits: int = 0, pct: bool = False) -> str:
    """A number of the reproduction's tables: ``-`` for none, ``not reached`` for +inf, a percentage."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "not reached" if v > 0 else "-inf"
    return f"{100 * v:.{digits}f} %" if pct else f"{v:.{digits}f}"


def fmt_interval(m: float, lo: float, hi: float, digits: int = 0, pct: bool = False, unit: str = "") -> str:
    """``median [low, high]`` of the reproduction's tables (a bound at +inf reads ``not reached``)."""
    if isinstance(m, float) and math.isnan(m):
        return "-"
    text = fmt(m, digits, pct) + unit
    if math.isnan(lo) and math.isnan(hi):
        return text
    return f"{text} [{fmt(lo, digits, pct)}, {fmt(hi, digits, pct)}]"


def _num(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# ----------------------------------------------------------------------------------------------- nsrun-compare

COLUMNS = ("group", "task", "reached", "onset step [95% CI]", "train s at onset [95% CI]",
           "fewer steps; speedup vs baseline", "seeds per arm to settle (power 0.8)", "fewer seconds; speedup",
           "stability onset (median)",
           "lag stability - onset [95% CI]", "early stopping; compute")


def table_rows(groups) -> list[list[str]]:
    """One row of :data:`COLUMNS` per group."""
    rows = []
    for g in groups:
        s = g.stats
        is_base = s.baseline == "(baseline)"
        base = next((b for b in groups if b.label == s.baseline), None)
        base_steps = base.stats.steps[0] if base else math.nan
        base_seconds = base.stats.seconds[0] if base else math.nan
        rows.append([
            g.label + (" (baseline)" if is_base else ""), g.task, fmt_reached(s.n_reached, s.n, s.n_unknown,
                                                                          s.n_failed),
            fmt_ci(s.steps), fmt_ci(s.seconds, 1),
            fmt_versus(s.vs_steps, s.steps[0], base_steps), fmt_seeds(g.seeds),
            fmt_versus(s.vs_seconds, s.seconds[0], base_seconds),
            fmt_step(s.stab) if s.n_stab else "-",
            fmt_ci(s.lag) + (f" (n={s.n_lag})" if s.n_lag else ""),
            fmt_compute(s.compute),
        ])
    return rows


def write_compare_csv(groups, path: Path) -> None:
    header = ["group", "task", "n_runs", "n_reached", "onset_step_median", "onset_step_ci_low",
              "onset_step_ci_high", "onset_seconds_median", "onset_seconds_ci_low", "onset_seconds_ci_high",
              "baseline", "fewer_steps_frac", "fewer_steps_ci_low", "fewer_steps_ci_high", "speedup_steps",
              "speedup_steps_ci_low", "speedup_steps_ci_high", "fewer_seconds_frac", "fewer_seconds_ci_low",
              "fewer_seconds_ci_high", "speedup_seconds", "speedup_seconds_ci_low", "speedup_seconds_ci_high",
              "stab_onset_step_median", "lag_steps_median", "lag_ci_low", "lag_ci_high", "n_lag", "n_unknown",
              "n_stopped", "n_gave_up", "steps_trained", "steps_spared", "spared_frac", "train_seconds",
              "spared_seconds_est", "n_failed", *seeds_fields(None)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for g in groups:
            s = g.stats
            vs = []
            for c in (s.vs_steps, s.vs_seconds):
                vs += ([_num(c.fewer), *map(_num, c.fewer_ci), _num(c.speedup), *map(_num, c.speedup_ci)]
                       if c else [""] * 6)
            w.writerow([g.label, g.task, s.n, s.n_reached, *map(_num, s.steps), *map(_num, s.seconds),
                        s.baseline or "", *vs, _num(s.stab), *map(_num, s.lag), s.n_lag, s.n_unknown,
                        *compute_cells(s.compute), s.n_failed,
                        *(_num(v) if isinstance(v, float) else v for v in seeds_fields(g.seeds).values())])


def compute_cells(c: ComputeTotals) -> list:
    return [c.stopped, c.gave_up, c.steps_trained, c.steps_spared, _num(c.spared_frac), _num(c.train_seconds),
            _num(c.spared_seconds_est)]


def _or_blank(v) -> str:
    return "" if v is None else v


def write_runs_csv(groups, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "seed", "run_dir", "finished", "last_step", "onset_step", "onset_seconds",
                    "stab_key", "stab_onset_step", "lag_steps", "onset_status", "ended_by", "steps_spared",
                    "train_seconds"])
        for g in groups:
            for r in g.runs:
                o = r.onsets
                w.writerow([g.label, r.seed, str(r.path), r.finished, r.rows[-1]["step"], _or_blank(o.onset_step),
                            _num(o.onset_seconds), o.stab_key or "", _or_blank(o.stab_onset_step),
                            _or_blank(o.lag_steps), o.onset_status, ended_by(r), r.steps_spared,
                            _num(r.train_seconds)])


def ended_by(run) -> str:
    """``stopped`` / ``gave up`` for a run its stop rule ended, ``failed`` for one whose training failed, else
    empty."""
    return run.outcome.kind if run.outcome is not None else ""


def onset_cell(onsets: Onsets) -> str:
    if onsets.onset_status in (UNKNOWN, FAILED):
        return onsets.onset_status
    return "not reached" if onsets.onset_step is None else str(onsets.onset_step)


def write_compare_markdown(groups, path: Path, settings: dict, figure: str | None) -> None:
    lines = ["# Grokking onset comparison", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table_rows(groups)]
    lines += ["", "## Runs", "", "| group | seed | onset step | stability onset | lag | ended | run |",
              "|---" * 7 + "|"]
    for g in groups:
        for r in g.runs:
            o = r.onsets
            ended = _cell(r.outcome.text) if r.outcome is not None else f"step {r.last_step}"
            lines.append(f"| {g.label} | {r.seed} | {onset_cell(o)} "
                         f"| {'-' if o.stab_onset_step is None else o.stab_onset_step} "
                         f"| {'-' if o.lag_steps is None else o.lag_steps} | {ended} | {r.path} |")
    if figure:
        lines += ["", f"![overlay]({figure})"]
    path.write_text("\n".join(lines) + "\n")


def compare_table(groups, title: str, width: int):
    """The comparison as a rich table for a console ``width`` columns wide: a column per field (group labels
    folded one key per line) where that shows every word whole, else two columns, field and value, with a
    section per group."""
    from rich.table import Table

    rows = table_rows(groups)
    labels = [row[0].replace(", ", "\n") for row in rows]
    widest = max((len(part) for label in labels for part in label.splitlines()), default=5)
    table = Table(title=title, show_lines=len(rows) > 1 and any("\n" in label for label in labels))
    table.add_column(COLUMNS[0], overflow="fold", min_width=min(widest, 48))
    for c in COLUMNS[1:]:
        table.add_column(c, overflow="fold")
    for label, row in zip(labels, rows, strict=True):
        table.add_row(label, *row[1:])
    if _words_whole(table, [*COLUMNS, *labels, *(cell for row in rows for cell in row[1:])], width):
        return table
    table = Table(title=title, show_header=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for label, row in zip(labels, rows, strict=True):
        for i, (name, value) in enumerate(zip(COLUMNS, [label, *row[1:]], strict=True)):
            table.add_row(name, value, end_section=i == len(COLUMNS) - 1)
    return table


def _words_whole(table, cells: list[str], width: int) -> bool:
    """Whether ``table`` printed ``width`` columns wide shows its right border and every word of ``cells`` whole
    (rich folds a word wider than its column and crops what does not fit)."""
    import io
    import re

    from rich.console import Console

    console = Console(width=width, file=io.StringIO())
    console.print(table)
    text = console.file.getvalue()
    rows = [line.rstrip() for line in text.splitlines() if line[:1] in "┏┃┡│├└"]
    shown = set(re.split(r"[\s│┃]+", text))
    return all(row[-1] in "┓┃┩│┤┘" for row in rows) and all(word in shown for cell in cells for word in cell.split())


# ----------------------------------------------------------------------------------------------- the reproduction

SUMMARY_TITLE = "# Reproduction summary: Noise Stability of Transformer Models (Haris, Zhang, Yoshida, ICLR 2026)"
CLAIM1_RULE = ("Median over seeds with a percentile-bootstrap 95 % interval (10,000 resamples); a seed that never "
               "reaches the onset counts as later than any step. Fewer steps = 1 - group / baseline median; "
               "speedup = baseline / group, in steps and in cumulative training seconds (evaluation excluded); "
               "s/step = median training seconds per step relative to the baseline. Verdict rule (regulariser "
               "only): reproduced when the interval of fewer steps lies above 0; not reproduced when it does "
               "not and it excludes the paper's number (upper end <= 0 or below it); else inconclusive. "
               + SEEDS_RULE.replace("the paper's size", "the paper's size for the experiment"))


MAP_RULE = ("Modular addition over the map (docs/map.md): the verdicts table also "
            "gives, for each sign S, the map's best cell (the grid's cell with the lowest median steps to the onset "
            "over the grid's seeds) against the map's own baseline, in the map's regime: fewer steps and wall-clock "
            "speedup with their 95 % intervals; verdict faster when the interval of fewer steps lies above 0, slower "
            "when below, no difference when it holds 0 (the map's rule: there is no paper's number to compare with).")


COMPUTE_RULE = ("A run ended by its stop rule (conf/stop/onset.yaml) spares train.steps minus its last step; seconds "
                "spared are estimated at the run's own training seconds per step. With stop=onset at the onset's "
                "metric and level, a stopped run's onset is where its stopping stretch began; a run that gave up "
                "counts as not reached; a run stopped on another metric or at a looser level has an unknown "
                "onset, left out of the medians.")


def markdown_onset_table(rows: list[dict]) -> list[str]:
    head = ("experiment", "group", "onset", "seeds (not reached)", "last value, median (min-max)",
            "steps to onset, median [95 % CI]",
            "fewer steps vs baseline [95 % CI]", "seeds per arm to settle (power 0.8)", "speedup (steps)",
            "speedup (train seconds)",
            "s/step vs baseline", "paper", "verdict")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append("| " + " | ".join([
            r["experiment"], r["group"], r["onset"],
            f"{r['n_seeds']} ({r['n_not_reached']}" + (f", {r['n_unknown']} unknown)" if r["n_unknown"] else ")"),
            f"{r['final_median']:.3f} ({r['final_min']:.3f}-{r['final_max']:.3f})",
            fmt_interval(r["onset_median"], r["onset_ci_low"], r["onset_ci_high"]),
            fmt_interval(r["fewer_steps"], r["fewer_ci_low"], r["fewer_ci_high"], 1, pct=True),
            r.get("seeds_to_settle") or "-",
            fmt_interval(r["speedup"], r["speedup_ci_low"], r["speedup_ci_high"], 2, unit="x"),
            fmt_interval(r["wallclock_speedup"], r["wallclock_speedup_ci_low"], r["wallclock_speedup_ci_high"], 2,
                         unit="x"),
            fmt(r["time_per_step_ratio"], 2) + ("x" if not math.isnan(r["time_per_step_ratio"]) else ""),
            r["paper"] or "-", f"**{r['verdict']}** ({r['reason']})" if r["verdict"] else r["reason"] or "-",
        ]).replace("inf %", "inf") + " |")
    return out


def markdown_compute_table(rows: list[dict]) -> list[str]:
    """Early stopping's account per experiment and group (the ``compute_*`` keys of the onset rows)."""
    out = ["| experiment | group | runs stopped (onset rule) | gave up | steps trained | steps spared "
           "(% of configured) | train seconds | seconds spared (est.) |", "|---|---|---|---|---|---|---|---|"]
    shown = set()
    for r in rows:
        if (r["experiment"], r["group"]) in shown:  # the same runs read at another onset target
            continue
        shown.add((r["experiment"], r["group"]))
        frac = r["compute_spared_frac"]
        out.append(f"| {r['experiment']} | {r['group']} | {r['compute_stopped']} of {r['n_seeds']} | "
                   f"{r['compute_gave_up']} | {r['compute_steps_trained']} | {r['compute_steps_spared']} "
                   f"({fmt(frac, 0, pct=True)}) | {fmt(r['compute_train_seconds'], 1)} | "
                   f"{fmt(r['compute_spared_seconds_est'], 1)} |")
    return out


def write_rows_csv(rows: list[dict], path: Path) -> None:
    """Rows of dicts as csv (floats written with repr); nothing for no rows."""
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})


def influence_table(found: list[tuple[Path, dict]], paper_bounds: dict) -> list[str]:
    """Markdown: the bounds on the high-degree Fourier weight, ours (nsrun-influence) beside the paper's Table 1."""
    lines = ["| model | inputs x length | junta (90 % of influence) | bound from influence | bound from stability "
             "| ratio |", "|---|---|---|---|---|---|"]
    for d, s in found:
        lines.append(f"| {s.get('model', d.name)} ({d}) | {s['n_inputs']} x {s['seq_len']} | {s['junta_size']} of "
                     f"{s['n_resampleable']} | {s['influence_bound']:.3g} | {s['stability_bound']:.3g} | "
                     f"{s['bound_ratio']:.2f}x |")
    for name, (a, b) in paper_bounds.items():
        lines.append(f"| {name} (paper, Table 1) | 256 tokens | 5-10 | {a:g} | {b:g} | {a / b:.1f}x |")
    return lines


def claim_line(c: dict) -> str:
    verdict = f"**{c['verdict']}** ({c['reason']})" if c["verdict"] else c["reason"] or "-"
    return f"| {c['claim']} | {c['experiment']} | {c['statement']} | {c['measured']} | {verdict} |"


def verdict_lines(rows: list[dict], claims: list[dict]) -> list[str]:
    """The verdicts table's rows: claim 1 per regulariser arm (the onset rows with a verdict), each experiment's
    other claim-1 rows (the map's best cells) right after its own, then the other claims."""
    ruled = [r for r in rows if r["verdict"]]
    extra = [c for c in claims if c["claim"] == 1]
    lines = []
    for i, r in enumerate(ruled):
        fewer = fmt_interval(r["fewer_steps"], r["fewer_ci_low"], r["fewer_ci_high"], 1, pct=True)
        settle = (f"; seeds per arm to settle (power 0.8): {r['seeds_to_settle']}"
                  if r["verdict"] == "inconclusive" and r.get("seeds_to_settle") else "")
        lines.append(f"| 1 | {r['experiment']} | the regulariser ({r['group']}) reaches the onset ({r['onset']}) "
                     f"in fewer steps (paper: {r['paper']}) | {fewer} fewer steps | **{r['verdict']}** "
                     f"({r['reason']}{settle}) |")
        if i + 1 == len(ruled) or ruled[i + 1]["experiment"] != r["experiment"]:
            lines += [claim_line(c) for c in extra if c["experiment"] == r["experiment"]]
    placed = {r["experiment"] for r in ruled}
    return lines + [claim_line(c) for c in claims if c["claim"] != 1 or c["experiment"] not in placed]


def write_summary(out: Path, rows: list[dict], claims: list[dict], figures: list[Path], settings: dict,
                  influence: list | None = None, paper_bounds: dict | None = None) -> Path:
    """``summary.md`` (tables, verdicts, figures) and ``summary.csv`` / ``claims.csv`` into ``out``."""
    write_rows_csv(rows, out / "summary.csv")
    write_rows_csv(claims, out / "claims.csv")
    lines = [SUMMARY_TITLE, ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "## Claim 1: steps to onset, regularised and peers vs baseline", "", CLAIM1_RULE, ""]
    lines += markdown_onset_table(rows)
    lines += ["", "## Compute: training spent and spared by early stopping (the runs' stop rule)", "",
              COMPUTE_RULE, ""]
    lines += markdown_compute_table(rows)
    if any(c["claim"] == 1 and c["verdict"] for c in claims):  # the map's rows (a map that has not run: one row)
        lines += ["", MAP_RULE]
    lines += ["", "## Claims 1-6: verdicts", "", "| claim | experiment | statement | measured | verdict |",
              "|---|---|---|---|---|"]
    lines += verdict_lines(rows, claims)
    if influence:
        lines += ["", "## Claim 6: influence and Fourier-tail bounds of a pretrained model (results/influence)", ""]
        lines += influence_table(influence, paper_bounds or {})
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures if p.suffix == ".png"]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def summary_tables(rows: list[dict], claims: list[dict]) -> list:
    """The steps-to-onset table and the claims table, as rich tables."""
    from rich.table import Table

    t = Table(title="steps to onset (median [95 % CI] over seeds) vs the paper")
    for c in ("experiment", "group", "seeds (not reached)", "onset", "fewer steps", "speedup (s)", "paper", "verdict"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(r["experiment"], r["group"], f"{r['n_seeds']} ({r['n_not_reached']})",
                  fmt_interval(r["onset_median"], r["onset_ci_low"], r["onset_ci_high"]),
                  fmt_interval(r["fewer_steps"], r["fewer_ci_low"], r["fewer_ci_high"], 1, pct=True),
                  fmt_interval(r["wallclock_speedup"], r["wallclock_speedup_ci_low"], r["wallclock_speedup_ci_high"],
                               2, unit="x"), r["paper"], r["verdict"])
    c_table = Table(title="claims")
    for c in ("claim", "experiment", "measured", "verdict"):
        c_table.add_column(c, overflow="fold")
    for c in claims:
        c_table.add_row(str(c["claim"]), c["experiment"], c["measured"], c["verdict"])
    return [t, c_table]
