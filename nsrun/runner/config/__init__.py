"""The config schema: one module per config group, each with its structured configs (dataclasses in Hydra's
ConfigStore, named in the group's option files under conf/), its range checks and the function that builds
its science object.

* :func:`validate` checks a composed config (every section; no I/O) and raises
  :class:`nsrun.runner.errors.ConfigError` naming the first bad key and what is allowed. A key that the
  selected option does not use is refused by name (``reg.rho has no effect with reg=none; choose
  reg=stability``), and so is a key that no schema knows (``+train.step=500``: did you mean ``train.steps``?).
* :func:`preflight` does the checks that need I/O (a CUDA device, the data files, the hub), once before any
  compute.
* The builders: :func:`build_task`, :func:`build_model`, :func:`build_objective`, :func:`make_optimizer`,
  :func:`lr_lambda`, :func:`monitor_settings`, :func:`build_logger`, :func:`stop_rule`; :func:`describe_reg`
  says in one line which regulariser a run trains with.
"""

from __future__ import annotations

import os
from pathlib import Path

# every group module registers its schema on import
from nsrun.runner.config import experiment, logger, model, noise, optim, reg, run, stop, task  # noqa: F401
from nsrun.runner.config.checks import (
    DEVICE_RE,
    check_int,
    require_bool,
    require_choice,
    require_int,
    require_number,
)
from nsrun.runner.config.experiment import check_experiment
from nsrun.runner.config.logger import build_logger
from nsrun.runner.config.model import build_model
from nsrun.runner.config.noise import build_schedule
from nsrun.runner.config.optim import lr_lambda, make_optimizer
from nsrun.runner.config.reg import build_objective, check_schedule_used, describe_reg
from nsrun.runner.config.run import check_exact_task, monitor_settings
from nsrun.runner.config.schema import (
    GROUPS,
    OPTIONS,
    SECTIONS,
    TOP_LEVEL_KEYS,
    field_names,
    groups,
    section,
    unknown_key,
)
from nsrun.runner.config.stop import stop_rule
from nsrun.runner.config.task import build_task

# the option files; importing this package registers their schema with Hydra, so compose after importing it
CONF_DIR = os.environ.get("NSRUN_CONFIG_DIR", str(Path(__file__).resolve().parents[3] / "conf"))

__all__ = [
    "CONF_DIR", "DEVICE_RE", "GROUPS", "OPTIONS", "SECTIONS", "build_logger", "build_model", "build_objective",
    "build_schedule", "build_task", "describe_reg", "field_names", "lr_lambda", "make_optimizer", "monitor_settings",
    "preflight", "require_bool", "require_choice", "require_int", "require_number", "section", "stop_rule",
    "unknown_key", "validate",
]


def validate(cfg) -> None:
    """Check every section of a composed config; raise ConfigError on the first bad key. No I/O."""
    for key in cfg:
        if key not in TOP_LEVEL_KEYS and key not in OPTIONS and key not in SECTIONS:
            raise unknown_key(str(key), cfg)
    check_int("seed", cfg.get("seed"), 0, typed=False)
    check_experiment(cfg)
    sections = {group: section(cfg, group) for group in groups()}
    check_schedule_used(sections["reg"], sections["noise"])
    check_exact_task(sections["stability"], sections["task"])


def preflight(cfg) -> None:
    """The checks that need I/O, for a validated config: a CUDA device for ``train.device=cuda*``, the task's
    data (files, tokenizer cache, the hub). Raise ConfigError with the same one-line messages as validate."""
    for group in ("train", "task"):
        checked = section(cfg, group)
        if hasattr(checked, "preflight"):
            checked.preflight()
