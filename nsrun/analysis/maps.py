"""The map of where noise-stability regularisation helps: its arms, read from the ``experiment.map``
key of ``conf/experiment/map_*.yaml``, and its finished runs as cells with onsets, statistics and verdicts.

    experiment:
      onset: {metric: val_acc, level: 0.95}
      map:
        root: runs/map/modadd_quick         # sweep dirs ROOT/SWEEP/${hydra.job.override_dirname}
        also_levels: [0.99]                 # onsets also read at these levels
        paper_cell: {reg.gamma: 0.75, reg.rho: 0.25}
        reg_overrides: {reg.noise: gaussian}  # optional: what every cell arm's reg=stability adds (and its price)
        grid: {panel: {key: reg.S, values: [1, 0]}, rows: {key: reg.gamma, values: [...]},
               cols: {key: reg.rho, values: [...]}}
        optuna: {dir: runs/map/optuna, confirm_seeds: [10, 11, 12, 13, 14]}
        arms:                               # in the order they run
          - {name: grid, sweep: grid, role: grid, cell: grid, overrides: {seed: [0, 1, 2]}}

A *cell* is one setting's seeds: the runs of one sweep dir that agree on every science key but the seed
(:func:`nsrun.analysis.runs.group_runs`). Every cell is compared with the baseline arm's cell (fewer steps to
the onset, ``1 - cell / baseline`` of the medians, and the same in training seconds, with percentile-bootstrap
intervals); its verdict is *faster* when the interval of fewer steps lies above 0, *slower* when it lies below,
*no difference* when it holds 0, *undetermined* when it is undefined (e.g. neither reaches the onset).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from nsrun.analysis.runs import Group, Run, group_runs, load_runs, run_onsets
from nsrun.analysis.stats import ComputeTotals, GroupStats, compute_totals, group_statistics, median_ci, onset_value
from nsrun.runner.stopping import StopRule, StopTracker
from nsrun.science.onsets import OnsetRule, Onsets, accuracy_onset, loss_onset

N_BOOT = 10_000
CELL_KEYS = ("reg.S", "reg.gamma", "reg.rho")
EXTRA_KEYS = {"noise.name": "constant", "reg.stop_grad_clean": False, "task.resample": "content",
              "reg.batch_fraction": 1.0, "reg.every_k_steps": 1, "reg.sigma": None}  # key: default
ROLES = ("baseline", "stop_check", "grid", "cell", "variant", "schedule", "optuna")
CELLS = ("grid", "paper", "best", "optuna")
VERDICTS = ("faster", "slower", "no difference", "undetermined")
SWEEP_LOG = "sweeps.jsonl"  # one row per sweep the map command ran, in the map's root
OPTUNA_RESULT = "optimization_results.yaml"  # what hydra-optuna-sweeper writes into its sweep dir
REGIME_KEYS = ("task", "model", "optim", "train", "stop")  # the config sections the summary states
PATIENCE_FACTORS = (0.5, 1, 2, 3)  # the patience check: the stop rule's onset at these multiples of the map's patience


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple


@dataclass(frozen=True)
class Grid:
    panel: Axis  # one heatmap per value (the sign S)
    rows: Axis
    cols: Axis

    @property
    def axes(self) -> tuple[Axis, Axis, Axis]:
        return self.panel, self.rows, self.cols


@dataclass(frozen=True)
class Arm:
    """One sweep of the map: ``overrides`` (key -> value, a list sweeps it) at ``cell`` (None: the overrides
    alone; grid | paper | best | optuna: ``reg=stability`` at those values) into ``ROOT/sweep``."""

    name: str
    sweep: str
    role: str
    overrides: dict
    cell: str | None = None
    best_from: str | None = None  # the map whose grid's best cell this arm takes (default: its own)


@dataclass(frozen=True)
class MapSpec:
    name: str
    config: str  # the file stem: +experiment=CONFIG
    title: str
    rule: OnsetRule
    also_levels: tuple[float, ...]
    root: Path
    paper_cell: dict
    grid: Grid | None
    arms: tuple[Arm, ...]
    optuna_dir: Path | None = None
    confirm_seeds: tuple[int, ...] = ()
    regime: dict = field(default_factory=dict)  # the settings the summary states (task, model, optim, train, stop)
    reg_overrides: dict = field(default_factory=dict)  # added to reg=stability in every cell arm

    @property
    def levels(self) -> tuple[float, ...]:
        return (self.rule.level, *self.also_levels)

    def rule_at(self, level: float) -> OnsetRule:
        return replace(self.rule, level=level)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def sweeps(self, role: str | None = None) -> list[str]:
        """The sweep dirs of the arms (with ``role``), in arm order, each once."""
        return list(dict.fromkeys(a.sweep for a in self.arms if role is None or a.role == role))


# ----------------------------------------------------------------------------------------------- the spec


def spec_from_config(stem: str, cfg, root: Path | None = None) -> MapSpec:
    """The :class:`MapSpec` of a composed ``+experiment=STEM`` config; ``root`` replaces ``experiment.map.root``'s
    parent (``--root R``: the sweeps go to ``R/NAME``). Its ``experiment`` block is typed by its schema
    (nsrun/runner/config/experiment.py); a bad value raises ValueError naming the file and key."""
    from omegaconf import OmegaConf

    where = f"conf/experiment/{stem}.yaml: experiment.map"
    meta = OmegaConf.to_object(cfg.experiment)
    m = meta.map
    if m is None:
        raise ValueError(f"conf/experiment/{stem}.yaml: no experiment.map (not a map)")
    grid = Grid(*(Axis(a.key, tuple(a.values)) for a in (m.grid.panel, m.grid.rows, m.grid.cols))) if m.grid else None
    arms = tuple(Arm(a.name, a.sweep, a.role, dict(a.overrides), a.cell, a.best_from) for a in m.arms)
    spec = MapSpec(
        name=meta.name, config=stem, title=meta.title, rule=OnsetRule(meta.onset.metric, float(meta.onset.level)),
        also_levels=tuple(m.also_levels), root=(root / meta.name) if root is not None else Path(m.root),
        paper_cell=dict(m.paper_cell), grid=grid, arms=arms,
        optuna_dir=Path(m.optuna.dir) if m.optuna else None,
        confirm_seeds=tuple(m.optuna.confirm_seeds) if m.optuna else (),
        regime={k: OmegaConf.to_container(cfg[k], resolve=True) for k in REGIME_KEYS},
        reg_overrides=dict(m.reg_overrides))
    for a in arms:
        if a.role not in ROLES:
            raise ValueError(f"{where}.arms.{a.name}.role must be one of {', '.join(ROLES)}, got {a.role!r}")
        if a.cell is not None and a.cell not in CELLS:
            raise ValueError(f"{where}.arms.{a.name}.cell must be one of {', '.join(CELLS)}, got {a.cell!r}")
        if a.cell == "grid" and grid is None:
            raise ValueError(f"{where}.arms.{a.name}: cell grid, but the map has no grid")
    if sum(a.role == "baseline" for a in arms) != 1:
        raise ValueError(f"{where}.arms: exactly one arm must have role baseline")
    return spec


def load_map(stem: str, conf_dir: Path | None = None, root: Path | None = None) -> MapSpec:
    """The map of ``conf_dir/experiment/STEM.yaml`` (None: nsrun's conf/)."""
    from nsrun.analysis.experiments import compose

    return spec_from_config(stem, compose(conf_dir, [f"+experiment={stem}"]), root)


# ----------------------------------------------------------------------------------------------- overrides


def override_text(value) -> str:
    """A value as Hydra's command line takes it: a list sweeps (``1,0``), booleans lowercase, floats as repr."""
    if isinstance(value, (list, tuple)):
        return ",".join(override_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def cell_overrides(arm: Arm, cell: dict | None, reg_overrides: dict | None = None) -> list[str]:
    """The ``key=value`` overrides of one arm at ``cell`` (key -> value or list of values; None for an arm
    without a cell), a cell arm's ``reg=stability`` with the map's ``reg_overrides``. Hydra names each job's dir
    by its sorted overrides, so every arm that lands on a run another arm made (same sweep, same values) finds
    it finished and skips it."""
    items = {"reg": "stability", **(reg_overrides or {}), **cell} if arm.cell is not None else {}
    items.update(arm.overrides)
    return [f"{k}={override_text(v)}" for k, v in items.items()]


def grid_cell(grid: Grid) -> dict:
    """The whole grid as one sweep: every axis key with its list of values."""
    return {a.key: list(a.values) for a in grid.axes}


# ----------------------------------------------------------------------------------------------- cells


@dataclass(eq=False)
class Cell:
    """One setting's finished runs (a group of one sweep dir) with its statistics at each onset level."""

    sweep: str
    role: str
    group: Group
    values: dict  # CELL_KEYS and the EXTRA_KEYS that differ from their default
    stats: dict[float, GroupStats] = field(default_factory=dict)  # onset level -> its group_statistics

    @property
    def label(self) -> str:
        return cell_label(self.values) if self.role != "baseline" else "baseline"

    @property
    def runs(self) -> list[Run]:
        return self.group.runs

    def matches(self, values: dict) -> bool:
        return all(same_value(self.values.get(k, EXTRA_KEYS.get(k)), v) for k, v in values.items())


def same_value(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b or str(a) == str(b)


def cell_label(values: dict) -> str:
    """``S=1, gamma=0.75, rho=0.25`` with what sets it apart from the grid: ``noise=cosine``, ``stop-grad
    clean``, ``resample all``."""
    parts = [f"{k.rpartition('.')[2]}={override_text(values[k])}" for k in CELL_KEYS if k in values]
    extras = {"noise.name": f"noise={values.get('noise.name')}", "reg.stop_grad_clean": "stop-grad clean",
              "task.resample": f"resample {values.get('task.resample')}",
              "reg.batch_fraction": f"batch fraction {values.get('reg.batch_fraction')}",
              "reg.every_k_steps": f"every {values.get('reg.every_k_steps')} steps",
              "reg.sigma": f"sigma={values.get('reg.sigma')}"}
    parts += [extras[k] for k, d in EXTRA_KEYS.items() if k in values and not same_value(values[k], d)]
    return ", ".join(parts)


def cell_values(config: dict) -> dict:
    """The coordinates of a group (its flat config): CELL_KEYS and the EXTRA_KEYS that differ from their default."""
    out = {k: config[k] for k in CELL_KEYS if k in config}
    out.update({k: config[k] for k, d in EXTRA_KEYS.items() if k in config and not same_value(config[k], d)})
    return out


def cell_verdict(fewer_ci: tuple[float, float]) -> str:
    """faster: the interval of fewer steps (or seconds) lies above 0; slower: below; no difference: it holds 0;
    undetermined: it is undefined (NaN: e.g. neither the cell nor the baseline reaches the onset)."""
    lo, hi = fewer_ci
    if math.isnan(lo) or math.isnan(hi):
        return "undetermined"
    if lo > 0:
        return "faster"
    if hi < 0:
        return "slower"
    return "no difference"


@dataclass
class MapRuns:
    spec: MapSpec
    cells: list[Cell]  # every sweep's cells, the baseline first
    stop_check: list[Run]  # the baseline trained to the horizon (role stop_check)
    notes: list[str]
    n_boot: int = N_BOOT
    step_seconds: dict | None = None  # reg.name -> seconds per step measured side by side (None: the runs' own)

    @property
    def baseline(self) -> Cell | None:
        return next((c for c in self.cells if c.role == "baseline"), None)

    def with_role(self, *roles: str) -> list[Cell]:
        return [c for c in self.cells if c.role in roles]

    def find(self, roles: tuple[str, ...], values: dict) -> Cell | None:
        """The cell of ``roles`` at ``values`` (keys it lacks count at their EXTRA_KEYS default)."""
        full = {**{k: d for k, d in EXTRA_KEYS.items() if k not in values}, **values}
        return next((c for c in self.cells if c.role in roles and c.matches(full)), None)

    @property
    def runs(self) -> list[Run]:
        return [r for c in self.cells for r in c.runs] + self.stop_check


def step_price(step_seconds: dict | None, label: str, run: Run) -> float | None:
    """The seconds per step that price ``run`` of the cell ``label``: the cell's own (keyed by label), else its
    ``reg.name``'s; None without a price."""
    if not step_seconds:
        return None
    return step_seconds.get(label, step_seconds.get(run.config.get("reg.name")))


def priced_onsets(onsets: Onsets, cost: float | None) -> Onsets:
    """``onsets`` with the training seconds to the onset priced as onset step x ``cost`` (seconds per step measured
    side by side in one process, so free of the machine load the run met); unchanged without a price or an onset
    (never reached: inf, unknown: NaN)."""
    if cost is None or onsets.onset_step is None:
        return onsets
    return replace(onsets, onset_seconds=onsets.onset_step * cost)


def load_map_runs(spec: MapSpec, n_boot: int = N_BOOT, step_seconds: dict | None = None,
                  price_cells=None) -> MapRuns:
    """The finished runs of every sweep of ``spec`` as cells with statistics at each onset level (the runs keep
    the onsets of the map's level), and the stop check's runs. ``step_seconds`` (cell label or reg.name -> seconds
    per step), or ``price_cells(cells)`` returning it once the cells are known: the seconds to the onset are its
    step x that price (:func:`priced_onsets`) instead of the run's logged training seconds."""
    roles = {a.sweep: a.role for a in reversed(spec.arms)}  # a sweep's role: its first arm's
    cells, stop_check, notes = [], [], []
    for sweep in spec.sweeps():
        path = spec.root / sweep
        if not path.is_dir():
            notes.append(f"{path}: not run yet")
            continue
        runs, found = load_runs([path])
        notes += found
        if roles[sweep] == "stop_check":
            stop_check += runs
            continue
        for g in group_runs(runs):
            cells.append(Cell(sweep, roles[sweep], g, cell_values(g.config)))
            g.label = cells[-1].label
    cells.sort(key=lambda c: c.role != "baseline")
    base = cells[0] if cells and cells[0].role == "baseline" else None
    if base is None:
        notes.append(f"{spec.name}: no finished baseline runs: no comparisons")
    if cells and price_cells is not None:
        step_seconds = price_cells(cells)
    if cells:
        for level in reversed(spec.levels):  # the map's own level last: the runs keep its onsets
            rule = spec.rule_at(level)
            copies = [Group(c.group.key, c.group.config,
                            [replace(r, onsets=priced_onsets(run_onsets(r, rule, None),
                                                             step_price(step_seconds, c.label, r)))
                             for r in c.runs], c.group.label) for c in cells]
            base_copy = copies[0] if base is not None else None
            group_statistics(copies, {g.key: base_copy for g in copies} if base_copy else {}, n_boot, 0)
            for cell, copy in zip(cells, copies, strict=True):
                cell.stats[level] = copy.stats
                cell.group.runs, cell.group.stats = copy.runs, copy.stats
    for r in stop_check:
        r.onsets = run_onsets(r, spec.rule, None)
    return MapRuns(spec, cells, stop_check, notes, n_boot, step_seconds)


def selection_seeds(spec: MapSpec) -> set | None:
    """The seeds of the grid arm (run in every cell): the best cell is chosen on these; None: every seed."""
    arm = next((a for a in spec.arms if a.cell == "grid"), None)
    seeds = arm.overrides.get("seed") if arm is not None else None
    return None if seeds is None else set(seeds) if isinstance(seeds, list) else {seeds}


def best_cell(mr: MapRuns, panel_value=None) -> Cell | None:
    """The grid's cell (of sign ``panel_value``, None: either) with the lowest median steps to the onset over
    the grid arm's seeds (so that seeds added later to some cells do not change the choice); ties by the upper,
    then the lower end of its interval. None when no grid cell reaches the onset in most of those seeds."""
    grid, seeds = mr.spec.grid, selection_seeds(mr.spec)
    pool = [c for c in mr.with_role("grid") if not any(k in c.values for k in EXTRA_KEYS)
            and (panel_value is None or grid is None or same_value(c.values.get(grid.panel.key), panel_value))]
    scored = []
    for c in pool:
        m, lo, hi = median_ci([onset_value(r.onsets) for r in c.runs if seeds is None or r.seed in seeds], mr.n_boot)
        if math.isfinite(m):
            scored.append(((m, math.inf if math.isnan(hi) else hi, math.inf if math.isnan(lo) else lo, c.label), c))
    return min(scored, key=lambda x: x[0])[1] if scored else None


def best_values(cell: Cell, spec: MapSpec) -> dict:
    """The grid coordinates of a cell, as the best-cell arms override them."""
    keys = [a.key for a in spec.grid.axes] if spec.grid else list(CELL_KEYS)
    return {k: cell.values[k] for k in keys if k in cell.values}


# ----------------------------------------------------------------------------------------------- checks and logs


def patience_check(runs: list[Run], rule: OnsetRule, patiences: tuple[int, ...]) -> list[dict]:
    """Per run trained to its horizon (no stop rule): the onset for the rest of the run beside the onset that
    the stop rule (``rule``'s metric and level) would give at each patience, replayed on the same rows (a
    stopped run's rows are a prefix of its full-length run's: same config and seed, same metrics). A stop rule
    that never fires leaves the run at its horizon, so its onset is the rest-of-the-run one."""
    above = rule.comparison == ">="
    out = []
    for r in sorted(runs, key=lambda r: str(r.seed)):
        steps = [row["step"] for row in r.rows]
        values = [row.get(rule.metric) for row in r.rows]
        rest = accuracy_onset(steps, values, rule.level) if above else loss_onset(steps, values, rule.level)
        row = {"seed": r.seed, "last_step": r.last_step, "rest_of_run": rest}
        for p in patiences:
            tracker = StopTracker(StopRule(rule.metric, rule.level, "above" if above else "below", p))
            stopped = next((int(x["step"]) for x in r.rows if tracker.update(x)), None)
            row[p] = (tracker.since, stopped) if stopped is not None else (rest, None)
        out.append(row)
    return out


def read_sweep_log(root: Path) -> list[dict]:
    """The rows the map command appended to ``ROOT/sweeps.jsonl`` (command, start, seconds, exit code, commit)."""
    path = root / SWEEP_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_sweep_log(root: Path, row: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / SWEEP_LOG, "a") as f:
        f.write(json.dumps(row) + "\n")


@dataclass(frozen=True)
class MapCompute:
    """Compute of a map's runs (:func:`compute_account`)."""

    totals: ComputeTotals  # early stopping's account: stopped, gave up, steps and seconds trained and spared
    runs: int
    eval_seconds: float
    sweeps: int  # rows of sweeps.jsonl
    sweep_wall_seconds: float


def compute_account(mr: MapRuns) -> MapCompute:
    """Compute of a map's runs: early stopping's account (:func:`nsrun.analysis.stats.compute_totals`), eval
    seconds, and the wall time of its sweeps (sweeps.jsonl)."""
    runs = list({str(r.path): r for r in mr.runs}.values())
    log = read_sweep_log(mr.spec.root)
    return MapCompute(compute_totals(runs), len(runs),
                      sum(float(r.timing[-1].get("eval_seconds") or 0.0) for r in runs if r.timing), len(log),
                      sum(float(row.get("seconds", 0.0)) for row in log))


def optuna_result(directory: Path | None) -> dict | None:
    """hydra-optuna-sweeper's result in ``directory`` (best_params, best_value) and the number of trial run
    dirs beside it; None when the search has not been run."""
    if directory is None or not (directory / OPTUNA_RESULT).exists():
        return None
    result = yaml.safe_load((directory / OPTUNA_RESULT).read_text()) or {}
    trials = [p for p in directory.iterdir() if p.is_dir() and (p / "resolved_config.yaml").exists()]
    return {"dir": directory, "best_params": dict(result.get("best_params") or {}),
            "best_value": result.get("best_value"), "n_trials": len(trials)}


def optuna_trials_by_sign(directory: Path, rule: OnsetRule) -> dict:
    """The search's finished trials per reg.S: how many, how many reached the onset under ``rule``, and the
    range of their onset steps (None when none reached it)."""
    runs, _ = load_runs([directory])
    out: dict = {}
    for r in runs:
        onset = run_onsets(r, rule, None).onset_step
        sign = out.setdefault(r.config.get("reg.S"), {"n": 0, "reached": []})
        sign["n"] += 1
        if onset is not None:
            sign["reached"].append(onset)
    return {s: {"n": v["n"], "n_reached": len(v["reached"]),
                "range": (min(v["reached"]), max(v["reached"])) if v["reached"] else None} for s, v in out.items()}
