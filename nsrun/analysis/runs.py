"""Finished runs read from their run directories (through :mod:`nsrun.runner.rundir`), grouped by what
changes the science, and the baseline group of each group.

A *group* is the runs whose configs agree on every key of the science key
(:func:`nsrun.runner.science_key.science_config`) except the seed and ``train.parallel_seeds``: the seeds of
one setting. Each group is labelled by the keys whose values tell it apart from the others.

A run that its stop rule ended (``stop=onset``, :mod:`nsrun.runner.stopping`) has no "rest of the run" past
its last step: :func:`nsrun.runner.outcome.settle_onset` says, from the outcome DONE records, when its onset
still stands, when it counts as not reached and when it is unknown. A run whose training failed (its loss became
inf or nan) has onset status ``failed``: left out of the medians and counted apart, never as "not reached". A
finished run
whose metrics log is damaged (a torn last row: :meth:`nsrun.runner.rundir.RunDir.log_damage`) is left out with
a note until a rerun restores the row from its checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from nsrun.analysis.seeds_needed import SeedsNeeded
from nsrun.analysis.stats import GroupStats
from nsrun.runner.outcome import RunOutcome, settle_onset
from nsrun.runner.rundir import RunDir, find_run_dirs
from nsrun.runner.science_key import science_config
from nsrun.science.onsets import UNKNOWN, OnsetRule, Onsets, rule_onsets

NOT_GROUPED = ("seed", "train.parallel_seeds")  # keys that vary between the seeds of one group


@dataclass
class Run:
    path: Path
    config: dict  # the resolved config, flat: dotted key -> value
    science: dict  # the flat science key without NOT_GROUPED: what its group shares
    rows: list[dict]
    timing: list[dict]
    finished: bool
    onsets: Onsets | None = None  # once an analysis read them (:func:`run_onsets`)
    outcome: RunOutcome | None = None  # how it ended early (stop rule, failure); None: trained to its last step

    @property
    def failure(self) -> RunOutcome | None:
        """Its outcome if its training failed, else None."""
        return self.outcome if self.outcome is not None and self.outcome.failed else None

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def last_step(self) -> int:
        return int(self.rows[-1]["step"])

    @property
    def train_seconds(self) -> float:
        """Training seconds spent (timing.jsonl's last row; NaN without one). A vmapped stack of K seeds logs
        the stack's seconds: a seed's share is 1/K of them (the stack computes a stopped seed on until every
        seed has stopped)."""
        last = self.timing[-1] if self.timing else {}
        seconds = last.get("train_seconds")
        if not isinstance(seconds, (int, float)):
            return math.nan
        return float(seconds) / max(1, int(last.get("parallel_seeds") or 1))

    @property
    def steps_spared(self) -> int:
        """Steps its stop rule spared: ``train.steps`` minus the last step, for a run the rule ended; else 0."""
        steps = self.config.get("train.steps")
        ended = self.outcome is not None and self.outcome.by_rule
        return max(0, steps - self.last_step) if ended and isinstance(steps, int) else 0

    @property
    def task(self) -> str:
        return str(self.config.get("task.name", "?"))


@dataclass
class Group:
    key: str
    config: dict  # flat science key shared by its runs
    runs: list[Run]
    label: str = ""
    stats: GroupStats | None = None  # once :func:`nsrun.analysis.stats.group_statistics` filled it
    seeds: SeedsNeeded | None = None  # once :func:`nsrun.analysis.seeds_needed.group_seeds` filled it

    @property
    def task(self) -> str:
        return self.runs[0].task


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_run(run_dir: RunDir) -> tuple[Run | None, str | None]:
    """The run of a run directory with its config and logs, or None and why it cannot be read."""
    try:
        config = run_dir.read_config()
    except (OSError, yaml.YAMLError):
        config = None
    if not isinstance(config, dict):
        return None, f"{run_dir.path}: no readable {run_dir.config_path.name}; left out"
    rows = [r for r in run_dir.read_metrics() if isinstance(r, dict) and isinstance(r.get("step"), int)]
    if not rows:
        return None, f"{run_dir.path}: no metrics logged yet; left out"
    damage = run_dir.log_damage()
    if damage is not None:
        return None, (f"{run_dir.path}: damaged: {damage}; left out (rerunning its command restores the row from "
                      "the checkpoint)")
    timing = [r for r in run_dir.read_timing() if isinstance(r, dict) and isinstance(r.get("step"), int)]
    science = flatten(science_config(config, drop=NOT_GROUPED))
    flat = flatten(config)
    return Run(run_dir.path, flat, science, rows, timing, run_dir.status() == "done", outcome=run_dir.outcome()), None


def load_runs(paths: list[Path], include_unfinished: bool = False, hint: str = "") -> tuple[list[Run], list[str]]:
    """The finished runs under ``paths`` (searched recursively; with ``include_unfinished`` also the runs in
    progress, as they stand) and one note for each path or run that is left out. A run is in progress while it
    has no DONE or a writer holds it; ``hint`` is appended to the note that leaves one out."""
    runs, notes = [], []
    for top in map(Path, paths):
        if not top.is_dir():
            notes.append(f"{top}: not a directory; left out")
            continue
        found = find_run_dirs([top], include_unfinished=True)
        if not found:
            notes.append(f"{top}: no nsrun runs under it (no resolved_config.yaml); left out")
        for run_dir in found:
            run, why = read_run(run_dir)
            if run is None:
                notes.append(why)
                continue
            if not run.finished:
                where = f"last logged step {run.rows[-1]['step']} of {run.config.get('train.steps', '?')}"
                where += ", a writer holds it" if run_dir.is_locked() else ", no DONE"
                if not include_unfinished:
                    notes.append(f"{run.path}: still in progress or stopped ({where}); left out{hint}")
                    continue
                notes.append(f"{run.path}: unfinished ({where}); counted as it stands")
            if run.failure is not None:
                notes.append(f"{run.path}: training {run.failure.text}; counted as failed, left "
                             "out of the onset statistics")
            runs.append(run)
    return runs, notes


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


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by their science key minus the seed, each group labelled by what tells it apart."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = json.dumps(run.science, sort_keys=True, default=str)
        if key not in groups:
            groups[key] = Group(key, json.loads(key), [])
        groups[key].runs.append(run)
    out = list(groups.values())
    for g in out:
        g.runs.sort(key=lambda r: (str(r.seed), str(r.path)))
    for g, label in zip(out, distinguishing_labels([g.config for g in out]), strict=True):
        g.label = label
    return sorted(out, key=lambda g: g.label)


def merge_groups_by(groups: list[Group], key: str) -> tuple[list[Group], list[str]]:
    """One group per value of ``key`` (e.g. ``reg.name`` in a sweep that varies only the regulariser and the
    seed): groups kept apart by another key are merged into the first, with a note naming each differing key."""
    merged, notes = {}, []
    for g in groups:
        value = _fmt_value(g.config.get(key, g.label))
        if value not in merged:
            merged[value] = g
            continue
        first = merged[value]
        keys = sorted(k for k in set(g.config) | set(first.config) if g.config.get(k) != first.config.get(k))
        diffs = ", ".join(f"{k}: {first.config.get(k)!r} vs {g.config.get(k)!r}" for k in keys)
        notes.append(f"{key.rpartition('.')[0] or key}={value}: runs {', '.join(r.path.name for r in g.runs)} "
                     f"differ from {', '.join(r.path.name for r in first.runs)} in {diffs}; counted as one group")
        first.runs = sorted(first.runs + g.runs, key=lambda r: (str(r.seed), str(r.path)))
    return list(merged.values()), notes


# ----------------------------------------------------------------------------------------------- onsets


def run_onsets(run: Run, rule: OnsetRule, stability: str | None) -> Onsets:
    """The onsets of ``run`` under ``rule`` (:func:`nsrun.science.onsets.rule_onsets` of its rows), settled
    by how it ended (:func:`nsrun.runner.outcome.settle_onset`)."""
    return settle_onset(rule_onsets(run.rows, run.timing, rule, stability), run.outcome, rule)


def unknown_onset_notes(runs: list[Run], rule: OnsetRule) -> list[str]:
    """One note per stop rule whose runs have an unknown onset under ``rule``: what to do about it."""
    by_rule: dict[str, list[Run]] = {}
    for r in runs:
        if r.onsets is not None and r.onsets.onset_status == UNKNOWN:
            by_rule.setdefault(r.outcome.rule, []).append(r)
    return [f"{len(rs)} run(s) ended by their stop rule ({text}) cannot tell whether {rule.metric} "
            f"{rule.comparison} {rule.level:g} holds for the rest of the run: onset unknown, left out of the "
            f"statistics (stop on the onset's metric at a level at least as strict); e.g. {rs[0].path}"
            for text, rs in by_rule.items()]


# ----------------------------------------------------------------------------------------------- baselines

DEFAULT_BASELINE = {"reg.name": "none"}


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


def describe_selector(selector: dict) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in selector.items())


def matches(config: dict, selector: dict) -> bool:
    for key, value in selector.items():
        if key not in config:
            return False
        have = config[key]
        if not (have == value or _fmt_value(have) == _fmt_value(value)):
            return False
    return True


def choose_baselines(groups: list[Group], selector: dict) -> tuple[dict[str, Group], list[str]]:
    """For each group, the baseline group of the same task that differs from it in the fewest keys, and
    notes on tasks without one and on ties. Raises LookupError when no group matches ``selector``."""
    candidates = [g for g in groups if matches(g.config, selector)]
    spec = describe_selector(selector)
    if not candidates:
        seen = {k: sorted({_fmt_value(g.config.get(k, "-")) for g in groups}) for k in selector}
        values = "; ".join(f"{k} is {', '.join(v)}" for k, v in seen.items())
        raise LookupError(f"--baseline {spec}: no group matches (here {values}); speedups left out")
    out, notes = {}, []
    for task in sorted({g.task for g in groups}):
        pool = [b for b in candidates if b.task == task]
        if not pool:
            notes.append(f"task {task}: no group matches --baseline {spec}; its speedups are left out")
            continue
        for g in (g for g in groups if g.task == task):
            def distance(b, g=g):
                return sum(1 for k in set(b.config) | set(g.config) if b.config.get(k) != g.config.get(k))

            best = min(pool, key=lambda b: (distance(b), b.label))
            ties = [b for b in pool if distance(b) == distance(best) and b is not best]
            if ties and g not in pool:
                notes.append(f"group {g.label}: {len(ties) + 1} baseline groups fit equally; comparing with "
                             f"{best.label}")
            out[g.key] = best
    return out, notes


def default_baseline(groups: list[Group]) -> dict | None:
    """:data:`DEFAULT_BASELINE` (the groups trained without a regulariser) when some groups have it and others
    do not, else None (no group or every group: it tells no group apart)."""
    n = sum(matches(g.config, DEFAULT_BASELINE) for g in groups)
    return dict(DEFAULT_BASELINE) if 0 < n < len(groups) else None
