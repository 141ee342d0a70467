"""``nsrun --help``: the config groups, each with what it configures and its options (for reg and noise, the
keys of each option), rendered by the ``nsrun_groups`` resolver of conf/config.yaml's ``hydra.help.template``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from nsrun.runner.config import CONF_DIR

# groups of conf/ that have no schema of their own (Hydra's launcher group; the experiments, added with +)
OTHER_GROUPS = {"hydra/launcher": "where the jobs of a multirun (-m) run: local cores or GPUs, or SLURM",
                "hparams_search": "an Optuna search over the regulariser's settings (use with -m)",
                "+experiment": "one of the paper's experiments: its settings and its sweep (use with -m)"}
HELP_INDENT = 16


def _option_lines(group: str, name: str, chosen: bool) -> list[str]:
    """``name: what it is`` for an option with a schema of its own, and for reg and noise its keys."""
    from nsrun.runner.config import OPTIONS, field_names

    pad = " " * (HELP_INDENT + 2)
    mark = " (chosen)" if chosen else ""
    schema = OPTIONS.get(group, {}).get(name)
    doc = (schema.__doc__ or "").strip().splitlines()[0].rstrip(".") if schema else ""
    lines = [f"{pad}{name}{mark}: {doc}"]
    if group in ("reg", "noise"):
        keys = [k for k in field_names(schema) if k != "name"]
        lines.append(f"{pad}    keys: {' '.join(f'{group}.{k}' for k in keys) if keys else 'none'}")
    return lines


def groups_help(choices) -> str:
    """The config groups for ``nsrun --help``: each with one line on what it configures and its options
    (the chosen one marked; for reg and noise, the keys each option has)."""
    from nsrun.runner.config import GROUPS, OPTIONS

    lines = []
    for group, line in [*((g, GROUPS[g]) for g in ("task", "model", "optim", "reg", "noise", "stop", "logger")),
                        *OTHER_GROUPS.items()]:
        names = sorted(f.stem for f in (Path(CONF_DIR) / group.lstrip("+")).glob("*.yaml"))
        chosen = (choices or {}).get(group.lstrip("+"))
        lines.append(f"{group:<{HELP_INDENT}}{line}")
        if group in OPTIONS:
            lines += [out for n in names for out in _option_lines(group, n, n == chosen)]
        else:
            lines.append(" " * (HELP_INDENT + 2) + " | ".join(f"{n} (chosen)" if n == chosen else n for n in names))
    return "\n".join(lines)


OmegaConf.register_new_resolver("nsrun_groups", groups_help, replace=True)
