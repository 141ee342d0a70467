"""The paper's experiments as the reproduction reads them: the ``experiment:`` key of each
``conf/experiment/*.yaml`` (the runner ignores that key), composed by Hydra so that a quick file inherits
its full file's metadata and overrides what differs.

    experiment:
      name: modadd                 # the experiment; a quick file shares its full file's name
      quick: false                 # true in NAME_quick.yaml (make reproduce-figures-quick)
      figure: 1
      title: Modular addition
      onset: {metric: val_acc, level: 0.95}   # val_acc stays >= level; val_loss stays <= level
      # or a level from the baseline's runs (nsrun/analysis/arms.py), e.g. for a baseline that overfits:
      # onset: {metric: val_loss, level: {baseline_best: [1.0, 1.05]}, reach: first}
      #   baseline_best: factors of the best value every baseline seed reaches (one onset target each);
      #   reach: sustained (default: the first eval from which the metric stays past the level) | first (the
      #   first eval at which it is past the level)
      stability_window: 3          # moving average (eval points) before the steepest stability fall
      groups:                      # arm -> role (baseline | regulariser | control | peer), label, colour and
        none: {role: baseline, label: baseline, colour: tab:blue}   # optionally match: {key: value} (a run
        reward: {role: regulariser, label: S 1, colour: tab:red,    # belongs to the first arm whose match its
                 match: {reg.name: stability, reg.S: 1}}           # config has; default {reg.name: ARM})
      sweeps: ["reg=none", "reg=stability reg.S=1,0"]   # optional: one nsrun -m per entry (x the sweeper's
                                   # params), for arms that no single grid holds (reg=none has no reg.S)
      paper: {result: "...", fewer_steps: 0.267}  # the paper's claim 1 as text and as a fraction
      claims: [correlation]        # claims its runs test besides claim 1: lag (2), final_stability (3),
                                   # correlation (4), theory (5: on this experiment's model)
      text_subset: {train_lines: 1000, val_lines: 500}   # optional: WikiText-2 subset files (see commands)

Roles: the baseline arm is what every arm is compared with; claim 1's verdict is given for each regulariser
arm (the paper's method: S 1), and intervals without a verdict for control arms (e.g. the opposite sign, S 0)
and peers (other accelerators).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from nsrun.science.onsets import OnsetRule

ROLES = ("baseline", "regulariser", "control", "peer")
CLAIMS = ("lag", "final_stability", "correlation", "theory")
REACH = ("sustained", "first")


@dataclass(frozen=True)
class GroupStyle:
    role: str
    label: str
    colour: str
    match: tuple[tuple[str, object], ...] = ()  # (dotted config key, value) a run of this arm has; () = reg.name


@dataclass(frozen=True)
class Experiment:
    """One experiment at one setting (full or quick): its config file, sweep directory and how it is read."""

    name: str
    config: str                 # the file stem: +experiment=CONFIG
    quick: bool
    figure: int
    title: str
    onset_metric: str
    onset_level: float | None  # None: levels from the baseline's runs (baseline_factors)
    stability_window: int
    groups: dict[str, GroupStyle]  # arm -> style, in the figure's order
    paper: str
    paper_fewer_steps: float | None
    claims: tuple[str, ...]
    sweep_dir: Path
    text_subset: dict | None = None
    onset_reach: str = "sustained"  # sustained | first
    baseline_factors: tuple[float, ...] = ()  # onset levels: these factors x the baseline's best value
    sweeps: tuple[str, ...] = ()  # override sets, one nsrun -m each; () = one sweep of the sweeper's params

    @property
    def rule(self) -> OnsetRule:
        """The onset rule at the experiment's fixed level (a baseline-derived level: :func:`rule_at`)."""
        return self.rule_at(math.nan if self.onset_level is None else self.onset_level)

    def rule_at(self, level: float) -> OnsetRule:
        return OnsetRule(self.onset_metric, level, window=self.stability_window)

    def selector(self, arm: str) -> dict:
        """The config values that put a run in ``arm``: its ``match``, else ``{"reg.name": arm}``."""
        return dict(self.groups[arm].match) or {"reg.name": arm}

    def arms_with_role(self, role: str) -> list[str]:
        return [arm for arm, style in self.groups.items() if style.role == role]

    def with_role(self, role: str) -> str | None:
        """The first arm with ``role`` (baseline, regulariser)."""
        return next(iter(self.arms_with_role(role)), None)

    @property
    def baseline(self) -> str | None:
        return self.with_role("baseline")

    @property
    def regulariser(self) -> str | None:
        return self.with_role("regulariser")


def compose(conf_dir: Path | None, overrides: list[str], hydra_config: bool = False):
    """The config Hydra composes from ``conf_dir`` (None: nsrun's, :data:`nsrun.runner.config.CONF_DIR`) with
    ``overrides``; Hydra's errors propagate."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nsrun.runner.config import CONF_DIR  # importing it registers the schema that conf/ composes against

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir or CONF_DIR).resolve()), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=hydra_config)
    finally:
        GlobalHydra.instance().clear()


def from_config(stem: str, cfg) -> Experiment:
    """The :class:`Experiment` of a composed ``+experiment=STEM`` config (with its hydra node); its ``experiment``
    block is typed by its schema (nsrun/runner/config/experiment.py), its values are checked here."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    where = f"conf/experiment/{stem}.yaml: experiment"
    meta = OmegaConf.to_object(cfg.experiment)
    for key in ("figure", "paper"):
        if getattr(meta, key) is None:
            raise ValueError(f"{where}.{key} is missing (an experiment of the paper needs it)")
    bad = [arm for arm, g in meta.groups.items() if g.role not in ROLES]
    if not meta.groups or bad:
        raise ValueError(f"{where}.groups{f'.{bad[0]}.role' if bad else ''} must name arms whose role is one of "
                         f"{', '.join(ROLES)}")
    unknown = [c for c in meta.claims if c not in CLAIMS]
    if unknown:
        raise ValueError(f"{where}.claims: unknown claim {unknown[0]!r}; allowed: {', '.join(CLAIMS)}")
    level, factors = onset_level(meta.onset.level, where)
    if meta.onset.reach not in REACH:
        raise ValueError(f"{where}.onset.reach must be one of {', '.join(REACH)}, got {meta.onset.reach!r}")
    exp = Experiment(
        name=meta.name, config=stem, quick=meta.quick, figure=meta.figure, title=meta.title,
        onset_metric=meta.onset.metric, onset_level=level, stability_window=meta.stability_window,
        groups={arm: GroupStyle(g.role, g.label, g.colour, tuple(g.match.items())) for arm, g in meta.groups.items()},
        paper=meta.paper.result, paper_fewer_steps=meta.paper.fewer_steps, claims=tuple(meta.claims),
        sweep_dir=Path(cfg.hydra.sweep.dir), text_subset=asdict(meta.text_subset) if meta.text_subset else None,
        onset_reach=meta.onset.reach, baseline_factors=factors, sweeps=tuple(meta.sweeps))
    try:
        exp.rule  # noqa: B018  (checks the onset metric)
    except ValueError as e:
        raise ValueError(f"conf/experiment/{stem}.yaml: experiment.{e}") from None
    return exp


def onset_level(level, where: str) -> tuple[float | None, tuple[float, ...]]:
    """``(fixed level, ())`` for a number, ``(None, factors)`` for ``{baseline_best: [factors]}``."""
    if isinstance(level, dict):
        factors = level.get("baseline_best")
        if set(level) != {"baseline_best"} or not factors or not all(isinstance(f, (int, float)) and f > 0
                                                                      for f in factors):
            raise ValueError(f"{where}.onset.level must be a number or {{baseline_best: [positive factors]}}, "
                             f"got {level!r}")
        return None, tuple(float(f) for f in factors)
    return float(level), ()


def load_experiments(conf_dir: Path | None, quick: bool) -> dict[str, Experiment]:
    """Every experiment of ``conf_dir/experiment/*.yaml`` (None: nsrun's conf/) at the full or quick setting, by
    name, in figure order (then by name, numbers by value). Files without an ``experiment:`` key, or with an
    ``experiment.map`` (the map: :mod:`nsrun.analysis.maps`), are not experiments of the paper: skipped."""
    from nsrun.runner.config import CONF_DIR

    found = {}
    for path in sorted(Path(conf_dir or CONF_DIR, "experiment").glob("*.yaml")):
        cfg = compose(conf_dir, [f"+experiment={path.stem}"], hydra_config=True)
        if cfg.get("experiment") is None or cfg.experiment.map is not None:
            continue
        exp = from_config(path.stem, cfg)
        if exp.quick == quick:
            if exp.name in found:
                raise ValueError(f"conf/experiment: {found[exp.name].config}.yaml and {path.stem}.yaml are both "
                                 f"the {'quick' if quick else 'full'} setting of {exp.name}")
            found[exp.name] = exp
    return dict(sorted(found.items(), key=lambda item: (item[1].figure, natural_key(item[0]))))


def natural_key(name: str) -> list:
    """``parity_n20`` before ``parity_n100``: the runs of digits compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
