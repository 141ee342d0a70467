"""The paper's experiments as the reproduction reads them: the ``experiment:`` key of each
``conf/experiment/*.yaml`` (the runner ignores that key), composed by Hydra so that a quick file inherits
its full file's metadata and overrides what differs.

    experiment:
      name: modadd                 # the experiment; a quick file shares its full file's name
      quick: false                 # true in NAME_quick.yaml (make reproduce-figures-quick)
      figure: 1
      title: Modular addition
      onset: {metric: val_acc, level: 0.95}   # val_acc stays >= level; val_loss stays <= level
      stability_window: 3          # moving average (eval points) before the steepest stability fall
      groups:                      # reg option -> role (baseline | regulariser | peer), label, colour
        none: {role: baseline, label: baseline, colour: tab:blue}
      paper: {result: "...", fewer_steps: 0.267}  # the paper's claim 1 as text and as a fraction
      claims: [correlation]        # claims its runs test besides claim 1: lag (2), final_stability (3),
                                   # correlation (4), theory (5: on this experiment's model)
      text_subset: {train_lines: 1000, val_lines: 500}   # optional: quick WikiText-2 files (see commands)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nsrun.science.onsets import OnsetRule

ROLES = ("baseline", "regulariser", "peer")
CLAIMS = ("lag", "final_stability", "correlation", "theory")


@dataclass(frozen=True)
class GroupStyle:
    role: str
    label: str
    colour: str


@dataclass(frozen=True)
class Experiment:
    """One experiment at one setting (full or quick): its config file, sweep directory and how it is read."""

    name: str
    config: str                 # the file stem: +experiment=CONFIG
    quick: bool
    figure: int
    title: str
    onset_metric: str
    onset_level: float
    stability_window: int
    groups: dict[str, GroupStyle]  # reg option -> style, in the figure's order
    paper: str
    paper_fewer_steps: float | None
    claims: tuple[str, ...]
    sweep_dir: Path
    text_subset: dict | None = None

    @property
    def rule(self) -> OnsetRule:
        return OnsetRule(self.onset_metric, self.onset_level, window=self.stability_window)

    def with_role(self, role: str) -> str | None:
        """The first reg option with ``role`` (baseline, regulariser)."""
        return next((reg for reg, style in self.groups.items() if style.role == role), None)

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
    """The :class:`Experiment` of a composed ``+experiment=STEM`` config (with its hydra node)."""
    from omegaconf import OmegaConf

    meta = OmegaConf.to_container(cfg.experiment, resolve=True)
    try:
        groups = {reg: GroupStyle(g["role"], g["label"], g["colour"]) for reg, g in meta["groups"].items()}
        bad = [reg for reg, g in groups.items() if g.role not in ROLES]
        if bad:
            raise ValueError(f"conf/experiment/{stem}.yaml: experiment.groups.{bad[0]}.role must be one of "
                             f"{', '.join(ROLES)}")
        unknown = [c for c in meta.get("claims", ()) if c not in CLAIMS]
        if unknown:
            raise ValueError(f"conf/experiment/{stem}.yaml: experiment.claims: unknown claim {unknown[0]!r}; "
                             f"allowed: {', '.join(CLAIMS)}")
        exp = Experiment(
            name=meta["name"], config=stem, quick=bool(meta.get("quick", False)), figure=int(meta["figure"]),
            title=meta["title"], onset_metric=meta["onset"]["metric"], onset_level=float(meta["onset"]["level"]),
            stability_window=int(meta.get("stability_window", 1)), groups=groups,
            paper=meta["paper"]["result"], paper_fewer_steps=meta["paper"].get("fewer_steps"),
            claims=tuple(meta.get("claims", ())), sweep_dir=Path(cfg.hydra.sweep.dir),
            text_subset=meta.get("text_subset"))
    except (KeyError, TypeError) as e:
        raise ValueError(f"conf/experiment/{stem}.yaml: experiment metadata incomplete ({e!r} missing)") from None
    try:
        exp.rule  # noqa: B018  (checks the onset metric)
    except ValueError as e:
        raise ValueError(f"conf/experiment/{stem}.yaml: experiment.{e}") from None
    return exp


def load_experiments(conf_dir: Path | None, quick: bool) -> dict[str, Experiment]:
    """Every experiment of ``conf_dir/experiment/*.yaml`` (None: nsrun's conf/) at the full or quick setting, by
    name, in figure order. Files without an ``experiment:`` key, or with an ``experiment.map`` (the map of issue 15:
    :mod:`nsrun.analysis.maps`), are not experiments of the paper: skipped."""
    from nsrun.runner.config import CONF_DIR

    found = {}
    for path in sorted(Path(conf_dir or CONF_DIR, "experiment").glob("*.yaml")):
        cfg = compose(conf_dir, [f"+experiment={path.stem}"], hydra_config=True)
        if cfg.get("experiment") is None or "map" in cfg.experiment:
            continue
        exp = from_config(path.stem, cfg)
        if exp.quick == quick:
            if exp.name in found:
                raise ValueError(f"conf/experiment: {found[exp.name].config}.yaml and {path.stem}.yaml are both "
                                 f"the {'quick' if quick else 'full'} setting of {exp.name}")
            found[exp.name] = exp
    return dict(sorted(found.items(), key=lambda item: item[1].figure))
