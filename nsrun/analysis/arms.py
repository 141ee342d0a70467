"""An experiment's arms and onset targets, from its ``experiment:`` metadata (:mod:`nsrun.analysis.experiments`).

* Arms: the groups the experiment names (``experiment.groups``), each selected by config values (its
  ``match``, default ``{reg.name: ARM}``): the baseline, the regulariser at each (S, rho), controls, peers.
  :func:`assign_arms` puts each group of runs (:func:`nsrun.analysis.runs.group_runs`) in the first arm that
  selects it.
* Targets: the onset level is fixed (``onset.level: 4.0``) or derived from the baseline arm's runs
  (``onset.level: {baseline_best: [1.0, 1.05]}``): the best value that every baseline seed reaches (the
  worst seed's best: for val_loss the largest of the seeds' minima), times each factor. Every arm is then
  read at the same levels. With ``reach: first`` a run's onset is the first eval at or past the level (a run
  that overfits after its best never *stays* there), else the first eval from which it stays past it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from nsrun.analysis.experiments import Experiment
from nsrun.analysis.runs import Group, matches, merge_groups_by, run_onsets
from nsrun.analysis.stats import group_statistics
from nsrun.science.onsets import FAILED, NOT_REACHED, REACHED, UNKNOWN, OnsetRule, Onsets, curve, value_at

ARM_KEY = "arm"  # the key under which a group's arm is set in its config while arms are merged
BASELINE_BEST = "baseline best"
N_BOOT = 10_000
BASELINE_BEST_MEANS = ("baseline best: the best value every baseline seed reaches (for val_loss the largest of "
                       "their minima)")


@dataclass(frozen=True)
class Target:
    """An onset level to read every arm at: ``rule``, how it is reached (sustained | first) and ``note``,
    where the level comes from (empty for a fixed level)."""

    rule: OnsetRule
    reach: str = "sustained"
    note: str = ""

    def describe(self) -> str:
        r = self.rule
        text = f"{'first ' if self.reach == 'first' else ''}{r.metric} {r.comparison} {r.level:.4g}"
        return f"{text} ({self.note})" if self.note else text


def assign_arms(groups: list[Group], exp) -> tuple[list[Group], dict[str, str], list[str]]:
    """``(groups, arm of each group key, notes)``: one group per arm of ``exp`` that has runs, in the
    experiment's order, then groups that no arm selects, one per ``reg.name`` (as arms of that name). Groups
    of one arm that another key keeps apart are merged, with a note naming the key."""
    for g in groups:
        arm = next((a for a in exp.groups if matches(g.config, exp.selector(a))), None)
        g.config[ARM_KEY] = arm if arm is not None else str(g.config.get("reg.name", g.label))
    merged, notes = merge_groups_by(groups, ARM_KEY)
    arms = {g.key: g.config.pop(ARM_KEY) for g in merged}
    for g in groups:
        g.config.pop(ARM_KEY, None)
    order = list(exp.groups)
    merged.sort(key=lambda g: (order.index(arms[g.key]) if arms[g.key] in order else len(order), g.label))
    return merged, arms, notes


def best_value(run, metric: str) -> float:
    """The best logged value of ``metric`` in a run (the lowest loss, the highest accuracy); NaN if none."""
    values = [v for v in curve(run.rows, metric)[1] if math.isfinite(v)]
    if not values:
        return math.nan
    return min(values) if metric == "val_loss" else max(values)


def baseline_best(runs, metric: str) -> float:
    """The best value that every baseline run reaches: the worst of the runs' best values (for val_loss the
    largest of their minima); NaN without runs."""
    best = [b for b in (best_value(r, metric) for r in runs) if math.isfinite(b)]
    if not best:
        return math.nan
    return max(best) if metric == "val_loss" else min(best)


def targets(exp, baseline: Group | None) -> tuple[list[Target], list[str]]:
    """The onset targets of ``exp``: its fixed level, or each factor times :func:`baseline_best` of the
    ``baseline`` group's runs; and a note when a baseline-derived target has no baseline runs to come from."""
    if exp.onset_level is not None:
        return [Target(exp.rule, exp.onset_reach)], []
    best = baseline_best(baseline.runs, exp.onset_metric) if baseline is not None else math.nan
    if not math.isfinite(best):
        return [], [f"no baseline ({exp.baseline}) run with {exp.onset_metric}: no target, claim 1 left out"]
    return [Target(exp.rule_at(factor * best), exp.onset_reach, BASELINE_BEST if factor == 1 else
                   f"{factor:g}x {BASELINE_BEST}") for factor in exp.baseline_factors], []


def first_reach(onsets: Onsets, run, rule: OnsetRule) -> Onsets:
    """``onsets`` with the onset at the first eval at or past the rule's level (``reach: first``). A run its
    stop rule ended (``run.outcome``) that never got there has an unknown onset (it might have later); a run
    whose training failed has none."""
    steps, values = curve(run.rows, rule.metric)
    above = rule.comparison == ">="
    step = next((s for s, v in zip(steps, values, strict=True) if (v >= rule.level if above else v <= rule.level)),
                None)
    seconds = value_at([t["step"] for t in run.timing], [t.get("train_seconds") for t in run.timing], step)
    stab = onsets.stab_onset_step
    out = replace(onsets, onset_step=step, onset_seconds=seconds, onset_status=REACHED if step is not None else
                  NOT_REACHED, lag_steps=stab - step if stab is not None and step is not None else None)
    if run.outcome is not None and run.outcome.failed:
        return out.without_onset(FAILED, math.nan)
    if step is None and run.outcome is not None:
        return replace(out, onset_seconds=math.nan, onset_status=UNKNOWN)
    return out


@dataclass
class ExperimentRuns:
    """One experiment's finished runs, one group per arm (:mod:`nsrun.analysis.arms`), with onsets and
    statistics filled in at the current target (:meth:`use`; baseline-derived levels give several)."""

    exp: Experiment
    groups: list[Group]
    stab_key: str | None
    notes: list[str] = field(default_factory=list)  # runs left out, ties between baselines
    config_notes: list[str] = field(default_factory=list)  # groups of one arm merged despite a key
    n_boot: int = N_BOOT
    arms: dict[str, str] = field(default_factory=dict)  # group key -> arm
    targets: list[Target] = field(default_factory=list)
    target: Target | None = None

    def reg(self, group: Group) -> str:
        """The arm of ``group`` (the reg option for arms without a ``match``)."""
        return self.arms.get(group.key) or str(group.config.get("reg.name", group.label))

    def group(self, reg: str | None) -> Group | None:
        return next((g for g in self.groups if self.reg(g) == reg), None)

    def label(self, group: Group) -> str:
        style = self.exp.groups.get(self.reg(group))
        return style.label if style else group.label

    def colour(self, group: Group) -> str:
        style = self.exp.groups.get(self.reg(group))
        return style.colour if style else "grey"

    @property
    def rule(self):
        return self.target.rule if self.target else self.exp.rule

    def use(self, target: Target) -> None:
        """Every run's onsets at ``target``, and each group's statistics against the baseline arm's."""
        self.target = target
        runs = [r for g in self.groups for r in g.runs]
        for r in runs:
            r.onsets = run_onsets(r, target.rule, self.stab_key)
            if target.reach == "first":
                r.onsets = first_reach(r.onsets, r, target.rule)
        base = self.group(self.exp.baseline)
        group_statistics(self.groups, {g.key: base for g in self.groups} if base else {}, self.n_boot, 0)
