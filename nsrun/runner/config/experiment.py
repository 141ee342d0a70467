"""``experiment``: the metadata block of conf/experiment/*.yaml, which the runner does not use: the reproduction
(nsrun/analysis/experiments.py) and the map (nsrun/analysis/maps.py) read it. Its schema is in Hydra's
ConfigStore as ``/schema/experiment`` (each experiment file without a parent names it), so a misspelt or
mistyped key is refused when the experiment is composed; the analysis checks the allowed values."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from nsrun.runner.config.schema import type_error
from nsrun.runner.errors import ConfigError


@dataclass
class Onset:
    """A run's onset: the first eval from which ``metric`` stays past ``level`` (``reach: sustained``) or the
    first eval at it (``first``); ``level``: a number or ``{baseline_best: [factors]}``."""

    metric: str = MISSING
    level: Any = MISSING
    reach: str = "sustained"


@dataclass
class GroupStyle:
    """An arm of a figure: its role, legend label and colour, and the config values of its runs."""

    role: str = MISSING
    label: str = MISSING
    colour: str = MISSING
    match: dict[str, Any] = field(default_factory=dict)


@dataclass
class PaperResult:
    result: str = MISSING
    fewer_steps: float | None = None


@dataclass
class TextSubset:
    train_lines: int = MISSING
    val_lines: int = MISSING


@dataclass
class Axis:
    key: str = MISSING
    values: list[Any] = MISSING


@dataclass
class Grid:
    panel: Axis = MISSING
    rows: Axis = MISSING
    cols: Axis = MISSING


@dataclass
class OptunaSearch:
    dir: str = MISSING
    confirm_seeds: list[int] = field(default_factory=list)


@dataclass
class Arm:
    name: str = MISSING
    sweep: str = MISSING
    role: str = MISSING
    overrides: dict[str, Any] = field(default_factory=dict)
    cell: str | None = None
    best_from: str | None = None


@dataclass
class Map:
    root: str = MISSING
    arms: list[Arm] = MISSING
    also_levels: list[float] = field(default_factory=list)
    paper_cell: dict[str, Any] = field(default_factory=dict)
    reg_overrides: dict[str, Any] = field(default_factory=dict)  # added to reg=stability in every cell arm
    grid: Grid | None = None
    optuna: OptunaSearch | None = None


@dataclass
class Experiment:
    """An experiment of the paper (``figure``, ``groups``, ``paper``, ...) or a map (``map``)."""

    name: str = MISSING
    title: str = MISSING
    onset: Onset = MISSING
    quick: bool = False
    figure: int | None = None
    stability_window: int = 1
    groups: dict[str, GroupStyle] = field(default_factory=dict)
    sweeps: list[str] = field(default_factory=list)
    paper: PaperResult | None = None
    claims: list[str] = field(default_factory=list)
    text_subset: TextSubset | None = None
    map: Map | None = None


ConfigStore.instance().store(group="schema", name="experiment", node=Experiment)


def check_experiment(cfg) -> None:
    """The ``experiment`` block, if any, against its schema: also a key added with ``+experiment.KEY=...``,
    which Hydra adds past the schema."""
    if cfg.get("experiment") is None:
        return
    try:
        OmegaConf.merge(OmegaConf.structured(Experiment), OmegaConf.to_container(cfg.experiment, resolve=True))
    except ConfigKeyError as e:
        known = ", ".join(f.name for f in fields(e.object_type)) if is_dataclass(e.object_type) else ""
        raise ConfigError(f"experiment.{e.full_key}", f"unknown key; allowed keys there: {known}") from None
    except ValidationError as e:
        raise type_error(f"experiment.{e.full_key}", e) from None
