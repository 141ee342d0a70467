"""``nsrun-compare``: when does grokking set in, per config, with what uncertainty?

Reads run directories (``metrics.jsonl``, ``timing.jsonl``, ``resolved_config.yaml``, ``DONE``) found under
the given run or sweep directories, groups the runs by their resolved config minus the seed (and minus
keys that do not change the science: device, threads, progress, parallel seeds, compile, eval batch size,
logger), and writes
per group the median onset step with a bootstrap interval, the runs that never reached it, the speedup
against a baseline group in steps and in training seconds, and the lag between stability onset and
accuracy onset: a rich table on stdout, ``compare.csv``, ``runs.csv``, ``compare.md`` and
``overlay.png``. Onset detection and the statistics are in :mod:`nsrun.analysis.onset`; nothing here needs wandb.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nsrun.analysis.onset import compare_ci, median, median_ci, run_onsets, stability_key

PROG = "nsrun-compare"
METRICS_FILE, TIMING_FILE, DONE_MARKER = "metrics.jsonl", "timing.jsonl", "DONE"
RESOLVED_CONFIG = "resolved_config.yaml"
IGNORED_KEYS = ("seed", "train.device", "train.threads", "train.progress", "eval.batch_size", "train.parallel_seeds",
                "train.parallel_backend", "train.compile")
IGNORED_PREFIXES = ("logger.", "hydra.")
SKIP_DIRS = {"wandb", ".hydra", "checkpoints", "compare", "__pycache__", ".git"}


class NothingToCompare(Exception):
    """No finished run could be read: nothing can be computed."""


@dataclass
class Run:
    path: Path
    config: dict  # flat: dotted key -> value
    rows: list[dict]
    timing: list[dict]
    finished: bool
    onsets: dict = field(default_factory=dict)

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def task(self) -> str:
        return str(self.config.get("task.name", "?"))


@dataclass
class Group:
    key: str
    config: dict
    runs: list[Run]
    label: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.runs[0].task


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def _read_config(run_dir: Path) -> dict | None:
    from omegaconf import OmegaConf

    for path in (run_dir / RESOLVED_CONFIG, run_dir / ".hydra" / "config.yaml"):
        if path.exists():
            try:
                config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
            except Exception:
                continue
            if isinstance(config, dict):
                return flatten(config)
    return None


def find_runs(paths: list[Path], include_unfinished: bool = False) -> list[Run]:
    """The runs under ``paths``; one warning line for each path or run that is left out."""
    runs = []
    for top in paths:
        if not top.is_dir():
            warn(f"{top}: not a directory; left out")
            continue
        found = 0
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            if METRICS_FILE not in files and RESOLVED_CONFIG not in files:
                continue
            dirs[:] = []
            found += 1
            run_dir = Path(root)
            config = _read_config(run_dir)
            rows = _read_jsonl(run_dir / METRICS_FILE)
            if config is None:
                warn(f"{run_dir}: no readable resolved_config.yaml or .hydra/config.yaml; left out")
                continue
            if not rows:
                warn(f"{run_dir}: no metrics logged yet; left out")
                continue
            finished = (run_dir / DONE_MARKER).exists()
            if not finished:
                where = f"last logged step {rows[-1]['step']} of {config.get('train.steps', '?')}"
                if not include_unfinished:
                    warn(f"{run_dir}: still in progress or stopped ({where}, no DONE); left out "
                         "(--include-unfinished counts it)")
                    continue
                warn(f"{run_dir}: unfinished ({where}); counted as it stands")
            runs.append(Run(run_dir, config, rows, _read_jsonl(run_dir / TIMING_FILE), finished))
        if not found:
            warn(f"{top}: no nsrun runs under it (no metrics.jsonl or resolved_config.yaml); left out")
    return runs


def science_key(config: dict) -> str:
    kept = {k: v for k, v in config.items()
            if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)}
    return json.dumps(kept, sort_keys=True, default=str)


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by config minus seed and non-science keys, each labelled by what tells it apart."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = science_key(run.config)
        if key not in groups:
            groups[key] = Group(key, {k: v for k, v in json.loads(key).items()}, [])
        groups[key].runs.append(run)
    out = list(groups.values())
    for g in out:
        g.runs.sort(key=lambda r: (str(r.seed), str(r.path)))
    labels = distinguishing_labels([g.config for g in out])
    for g, label in zip(out, labels, strict=True):
        g.label = label
    return sorted(out, key=lambda g: g.label)


def _fmt_value(v) -> str:
    return "null" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def distinguishing_labels(configs: list[dict]) -> list[str]:
    """``key=value, ...`` of the keys whose values differ between configs; a key under a group whose
    ``name`` differs too (``reg.gamma`` beside ``reg.name``) is left out when ``name`` determines it."""
    if len(configs) <= 1:
        return ["all runs"] * len(configs)
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({_fmt_value(c.get(k, "-")) for c in configs}) > 1]
    shown = []
    for k in varying:
        parent = k.rpartition(".")[0]
        name_key = f"{parent}.name"
        if parent and k != name_key and name_key in varying:
            by_name: dict[str, set] = {}
            for c in configs:
                by_name.setdefault(_fmt_value(c.get(name_key)), set()).add(_fmt_value(c.get(k, "-")))
            if all(len(v) == 1 for v in by_name.values()):
                continue
        shown.append(k)
    return [", ".join(f"{k}={_fmt_value(c.get(k, '-'))}" for k in shown) for c in configs]


def parse_selector(specs: list[str]) -> dict:
    """``["reg.name=none", "optim.weight_decay=1.0"]`` -> {key: value}; values parsed as YAML."""
    selector = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--baseline {spec!r}: expected KEY=VALUE, e.g. reg.name=none")
        try:
            selector[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            selector[key.strip()] = value
    return selector


def matches(config: dict, selector: dict) -> bool:
    for key, value in selector.items():
        if key not in config:
            return False
        have = config[key]
        if not (have == value or _fmt_value(have) == _fmt_value(value)):
            return False
    return True


def choose_baselines(groups: list[Group], selector: dict) -> dict[str, Group]:
    """For each group, the baseline group of the same task that differs from it in the fewest keys."""
    candidates = [g for g in groups if matches(g.config, selector)]
    spec = " ".join(f"{k}={_fmt_value(v)}" for k, v in selector.items())
    if not candidates:
        seen = {k: sorted({_fmt_value(g.config.get(k, "-")) for g in groups}) for k in selector}
        values = "; ".join(f"{k} is {', '.join(v)}" for k, v in seen.items())
        raise LookupError(f"--baseline {spec}: no group matches (here {values}); speedups left out")
    out = {}
    for task in sorted({g.task for g in groups}):
        pool = [b for b in candidates if b.task == task]
        if not pool:
            warn(f"task {task}: no group matches --baseline {spec}; its speedups are left out")
            continue
        for g in (g for g in groups if g.task == task):
            def distance(b, g=g):
                return sum(1 for k in set(b.config) | set(g.config) if b.config.get(k) != g.config.get(k))

            best = min(pool, key=lambda b: (distance(b), b.label))
            ties = [b for b in pool if distance(b) == distance(best) and b is not best]
            if ties and g not in pool:
                warn(f"group {g.label}: {len(ties) + 1} baseline groups fit equally; comparing with {best.label}")
            out[g.key] = best
    return out


def analyse(groups: list[Group], baselines: dict[str, Group], n_boot: int, seed: int) -> None:
    """Fill ``group.stats``: medians and intervals of onsets, speedups, stability lag."""
    for i, g in enumerate(groups):
        steps = [math.inf if r.onsets["onset_step"] is None else float(r.onsets["onset_step"]) for r in g.runs]
        seconds = [r.onsets["onset_seconds"] for r in g.runs]
        stab = [math.inf if r.onsets["stab_onset_step"] is None else float(r.onsets["stab_onset_step"])
                for r in g.runs if r.onsets["stab_key"] is not None]
        lags = [float(r.onsets["lag_steps"]) for r in g.runs if r.onsets["lag_steps"] is not None]
        s = {"n": len(g.runs), "n_reached": sum(math.isfinite(x) for x in steps),
             "steps": median_ci(steps, n_boot, seed=seed + i), "seconds": median_ci(seconds, n_boot, seed=seed + i),
             "stab": median(stab) if stab else math.nan, "n_stab": len(stab),
             "lag": median_ci(lags, n_boot, seed=seed + i) if lags else (math.nan,) * 3, "n_lag": len(lags),
             "baseline": None}
        base = baselines.get(g.key)
        if base is not None and base is not g:
            s["baseline"] = base.label
            base_steps = [math.inf if r.onsets["onset_step"] is None else float(r.onsets["onset_step"])
                          for r in base.runs]
            s["vs_steps"] = compare_ci(steps, base_steps, n_boot, seed=seed + i)
            s["vs_seconds"] = compare_ci(seconds, [r.onsets["onset_seconds"] for r in base.runs], n_boot,
                                         seed=seed + i)
        elif base is g:
            s["baseline"] = "(baseline)"
        g.stats = s


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
    """``median [low, high]``; ``not reached`` when the median is inf (half or more never got there)."""
    m, lo, hi = triple
    if math.isnan(m):
        return "-"
    if math.isinf(m):
        return "not reached" if m > 0 else "-inf"
    if math.isnan(lo) and math.isnan(hi):
        return f"{m:.{digits}f}{unit}"
    return f"{m:.{digits}f}{unit} [{fmt_bound(lo, digits)}, {fmt_bound(hi, digits)}]"


def fmt_versus(c: dict | None, group_median: float, base_median: float) -> str:
    """``26.7 % [lo, hi] fewer, 1.36x [lo, hi]`` against the baseline, or why it is undefined."""
    if not c:
        return "-"
    if math.isinf(group_median) and math.isinf(base_median):
        return "n/a: neither reached"
    if math.isinf(group_median):
        return "n/a: not reached"
    if math.isinf(base_median):
        return "n/a: baseline not reached"
    if math.isnan(c["speedup"]):
        return "-"
    fewer = fmt_ci((100 * c["fewer"], 100 * c["fewer_ci"][0], 100 * c["fewer_ci"][1]), 1, " %")
    return f"{fewer}; {fmt_ci((c['speedup'], *c['speedup_ci']), 2, 'x')}"


COLUMNS = ("group", "task", "reached", "onset step [95% CI]", "train s at onset [95% CI]",
           "fewer steps; speedup vs baseline", "fewer seconds; speedup", "stability onset (median)",
           "lag stability - onset [95% CI]")


def table_rows(groups: list[Group]) -> list[list[str]]:
    rows = []
    for g in groups:
        s = g.stats
        is_base = s["baseline"] == "(baseline)"
        base = next((b for b in groups if b.label == s["baseline"]), None)
        base_steps = base.stats["steps"][0] if base else math.nan
        base_seconds = base.stats["seconds"][0] if base else math.nan
        rows.append([
            g.label + (" (baseline)" if is_base else ""), g.task, f"{s['n_reached']}/{s['n']}",
            fmt_ci(s["steps"]), fmt_ci(s["seconds"], 1),
            fmt_versus(s.get("vs_steps"), s["steps"][0], base_steps),
            fmt_versus(s.get("vs_seconds"), s["seconds"][0], base_seconds),
            fmt_step(s["stab"]) if s["n_stab"] else "-",
            fmt_ci(s["lag"]) + (f" (n={s['n_lag']})" if s["n_lag"] else ""),
        ])
    return rows


def _num(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def write_csv(groups: list[Group], path: Path) -> None:
    header = ["group", "task", "n_runs", "n_reached", "onset_step_median", "onset_step_ci_low",
              "onset_step_ci_high", "onset_seconds_median", "onset_seconds_ci_low", "onset_seconds_ci_high",
              "baseline", "fewer_steps_frac", "fewer_steps_ci_low", "fewer_steps_ci_high", "speedup_steps",
              "speedup_steps_ci_low", "speedup_steps_ci_high", "fewer_seconds_frac", "fewer_seconds_ci_low",
              "fewer_seconds_ci_high", "speedup_seconds", "speedup_seconds_ci_low", "speedup_seconds_ci_high",
              "stab_onset_step_median", "lag_steps_median", "lag_ci_low", "lag_ci_high", "n_lag"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for g in groups:
            s = g.stats
            vs = []
            for c in (s.get("vs_steps"), s.get("vs_seconds")):
                vs += ([_num(c["fewer"]), *map(_num, c["fewer_ci"]), _num(c["speedup"]), *map(_num, c["speedup_ci"])]
                       if c else [""] * 6)
            w.writerow([g.label, g.task, s["n"], s["n_reached"], *map(_num, s["steps"]), *map(_num, s["seconds"]),
                        s["baseline"] or "", *vs, _num(s["stab"]), *map(_num, s["lag"]), s["n_lag"]])


def write_runs_csv(groups: list[Group], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "seed", "run_dir", "finished", "last_step", "onset_step", "onset_seconds",
                    "stab_key", "stab_onset_step", "lag_steps"])
        for g in groups:
            for r in g.runs:
                o = r.onsets
                w.writerow([g.label, r.seed, str(r.path), r.finished, r.rows[-1]["step"],
                            "" if o["onset_step"] is None else o["onset_step"], _num(o["onset_seconds"]),
                            o["stab_key"] or "", "" if o["stab_onset_step"] is None else o["stab_onset_step"],
                            "" if o["lag_steps"] is None else o["lag_steps"]])


def write_markdown(groups: list[Group], path: Path, settings: dict, figure: str | None) -> None:
    lines = ["# Grokking onset comparison", ""]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table_rows(groups)]
    lines += ["", "## Runs", "", "| group | seed | onset step | stability onset | lag | run |", "|---" * 6 + "|"]
    for g in groups:
        for r in g.runs:
            o = r.onsets
            lines.append(f"| {g.label} | {r.seed} | {'not reached' if o['onset_step'] is None else o['onset_step']} "
                         f"| {'-' if o['stab_onset_step'] is None else o['stab_onset_step']} "
                         f"| {'-' if o['lag_steps'] is None else o['lag_steps']} | {r.path} |")
    if figure:
        lines += ["", f"![overlay]({figure})"]
    path.write_text("\n".join(lines) + "\n")


def print_table(groups: list[Group], title: str) -> None:
    from rich.console import Console
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
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)


def plot_overlay(groups: list[Group], path: Path, onset_key: str, onset_level: float, stab_key: str | None) -> None:
    """Validation curves and stability vs step: one colour per group, seeds as thin lines, onsets marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [onset_key] + (["val_loss"] if onset_key != "val_loss" else []) + ([stab_key] if stab_key else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for gi, g in enumerate(groups):
        colour = colours[gi % len(colours)]
        for ri, r in enumerate(g.runs):
            steps = [row["step"] for row in r.rows]
            for ax, key in zip(axes, panels, strict=True):
                values = [row.get(key, math.nan) for row in r.rows]
                values = [math.nan if v is None else v for v in values]
                ax.plot(steps, values, color=colour, lw=0.8, alpha=0.7,
                        label=f"{g.label} (n={len(g.runs)})" if ri == 0 and key == panels[0] else None)
                marks = [(r.onsets["onset_step"], "o")]
                if key == stab_key:
                    marks = [(r.onsets["stab_onset_step"], "v")]
                for step, marker in marks:
                    if step is not None and step in steps:
                        ax.plot([step], [values[steps.index(step)]], marker=marker, color=colour, ms=5)
        m = g.stats.get("steps", (math.nan,))[0]
        if math.isfinite(m):
            for ax in axes:
                ax.axvline(m, color=colour, ls="--", lw=1)
    axes[0].axhline(onset_level, color="grey", ls=":", lw=1)
    for ax, key in zip(axes, panels, strict=True):
        ax.set_ylabel(key)
        if key == "val_loss":
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    axes[0].legend(fontsize=7, loc="best")
    axes[0].set_title("onsets: o accuracy/loss (per seed), v stability fall, dashed = group median onset",
                      fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"{PROG}: error: {message} (see {PROG} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Compare grokking onsets of nsrun runs, grouped by config "
                                "minus seed, with bootstrap confidence intervals.")
    p.add_argument("paths", nargs="+", type=Path, help="run directories or sweep directories (searched recursively)")
    p.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                   help="the baseline group, e.g. reg.name=none or optim.weight_decay=1.0 (repeat to AND)")
    p.add_argument("--threshold", type=float, default=0.95,
                   help="accuracy onset: first step from which val_acc stays >= this (default 0.95)")
    p.add_argument("--target-loss", type=float, default=None,
                   help="onset from val_loss instead: first step from which it stays <= this (next-token tasks)")
    p.add_argument("--stability", default=None, metavar="KEY",
                   help="stability metric in metrics.jsonl (default: the first stab_token_val_rho*)")
    p.add_argument("--stability-level", type=float, default=None,
                   help="stability onset = first step at or below this level (default: the steepest fall)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window (points) before the steepest fall")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--include-unfinished", action="store_true", help="count runs without DONE as they stand")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: PATH/compare for one PATH, else ./compare)")
    return p


def compare(args) -> int:
    """Run a comparison; returns the exit code (2 when the input was bad, also with partial results)."""
    selector = parse_selector(args.baseline)
    if args.target_loss is None and not 0 < args.threshold <= 1:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    if args.n_boot < 100:
        raise ValueError(f"--n-boot must be >= 100, got {args.n_boot}")
    if args.smooth < 1:
        raise ValueError(f"--smooth must be >= 1, got {args.smooth}")
    runs = find_runs(args.paths, args.include_unfinished)
    if not runs:
        raise NothingToCompare("no finished nsrun runs found under " + ", ".join(map(str, args.paths)))
    stab = args.stability
    if stab is None:
        stab = stability_key(set().union(*(r.rows[-1].keys() for r in runs)))
    elif not any(stab in row for r in runs for row in r.rows):
        warn(f"--stability {stab}: no run logs it; stability onsets left out")
    for r in runs:
        r.onsets = run_onsets(r.rows, r.timing, args.threshold, args.target_loss, stab if stab else None,
                              args.stability_level, args.smooth)
        if stab is None or not any(stab in row for row in r.rows):
            r.onsets.update(stab_key=None, stab_onset_step=None, lag_steps=None)
    groups = group_runs(runs)
    tasks = sorted({g.task for g in groups})
    if len(tasks) > 1:
        warn(f"runs of {len(tasks)} tasks mixed ({', '.join(tasks)}): each group is compared only with a "
             "baseline of its own task")
    if args.target_loss is None:
        for task in sorted({r.task for r in runs if "val_ppl" in r.rows[-1]}):
            warn(f"task {task} is next-token prediction: accuracy onset at {args.threshold} may never be reached; "
                 "--target-loss sets a validation-loss target")
    code = 0
    baselines = {}
    if selector:
        try:
            baselines = choose_baselines(groups, selector)
        except LookupError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            code = 2
    analyse(groups, baselines, args.n_boot, args.seed)

    out = args.out or (args.paths[0] / "compare" if len(args.paths) == 1 and args.paths[0].is_dir()
                       else Path("compare"))
    out.mkdir(parents=True, exist_ok=True)
    onset_key, level = ("val_loss", args.target_loss) if args.target_loss is not None else ("val_acc", args.threshold)
    onset_desc = f"{onset_key} {'<=' if onset_key == 'val_loss' else '>='} {level:g} for the rest of the run"
    stab_desc = (f"{stab}: " + (f"first step <= {args.stability_level:g}" if args.stability_level is not None
                                else "end of the steepest fall" + (f" (moving average {args.smooth})"
                                                                    if args.smooth > 1 else ""))) if stab else "none"
    settings = {"onset": onset_desc, "stability onset": stab_desc,
                "baseline": " ".join(args.baseline) or "none",
                "intervals": f"percentile bootstrap over seeds, 95 %, {args.n_boot} resamples, seed {args.seed}",
                "seconds": "cumulative training seconds at the onset step (timing.jsonl; evaluation excluded)",
                "runs": f"{len(runs)} in {len(groups)} groups"}
    figure = "overlay.png"
    plot_overlay(groups, out / figure, onset_key, level, stab)
    write_csv(groups, out / "compare.csv")
    write_runs_csv(groups, out / "runs.csv")
    write_markdown(groups, out / "compare.md", settings, figure)
    print_table(groups, f"grokking onset: {onset_desc}")
    print(f"wrote {out / 'compare.csv'}, {out / 'runs.csv'}, {out / 'compare.md'}, {out / figure}")
    return code


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = compare(args)
    except (ValueError, NothingToCompare) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
