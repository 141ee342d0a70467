"""What ``nsrun`` checks before Hydra starts anything: every job of a run or a sweep (the sweeper's params
included) composed and validated, each Hydra or OmegaConf error as one line naming the key (from the
exception's fields: OmegaConf's ``full_key``, Hydra's missing option and the group's options), exit code 2,
and nothing created on disk.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nsrun.runner.config import CONF_DIR

MAX_VALIDATED_JOBS = 1024


def fail(message: str, code: int = 2, prog: str = "nsrun") -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def _child_keys(cfg, parent: str) -> list[str]:
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []


def _unknown_key(full: str, cfg: DictConfig | None, schema: bool) -> str:
    """One line for a key that the config does not have: from nsrun's schema (which options have the key,
    did you mean), else the keys the config has there."""
    if schema:
        from nsrun.runner.config import unknown_key

        return str(unknown_key(full, cfg))
    parent = full.rpartition(".")[0]
    keys = _child_keys(cfg, parent) if cfg is not None else []
    if not keys:  # e.g. hydra.launcher.*, not in the composed job config
        return f"{full}: unknown key"
    where = f"under '{parent}'" if parent else "at the top level"
    return f"{full}: unknown key; allowed keys {where}: {', '.join(keys)}"


TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _wrong_type(key: str, cfg: DictConfig | None, overrides: list[str], exc: BaseException) -> str:
    """One line for a value that OmegaConf's typed config refused at ``key``: what the key takes (the type of
    its value in ``cfg``) and the value given on the command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = next((o for o in OverridesParser.create().parse_overrides(overrides)
                  if o.get_key_element().lstrip("+~") == key), None)
    if given is not None and given.value() is None:
        return f"{key}: must not be null"
    current = OmegaConf.select(cfg, key, default=None) if cfg is not None else None
    if OmegaConf.is_list(current):
        want = "a list"
    else:
        want = next((w for t, w in TYPE_WORDS.items() if isinstance(current, t)), None)
    if want is None:
        return f"{key}: {str(exc).splitlines()[0]}"
    if given is None:  # a key below it was set (reg.rho.x=1)
        return f"{key}: must be {want}"
    return f"{key}: must be {want}, got {given.get_value_element_as_str()!r}"


def format_hydra_error(exc: BaseException, base_cfg: DictConfig | None, schema: bool = True,
                       overrides: list[str] | None = None) -> str:
    """One line for a Hydra composition or override error, from the exception's fields: the missing option and
    the group's options (MissingConfigException), the override that does not parse, or OmegaConf's ``full_key``
    of a key the config lacks or a value of the wrong type. ``base_cfg``: the config the overrides apply to (its
    selected options name the keys that exist); ``schema``: it is nsrun's config (conf/config.yaml);
    ``overrides``: the job's overrides (the value given for a key)."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    if isinstance(exc, MissingConfigException) and "/" in (exc.missing_cfg_file or ""):
        group, _, option = exc.missing_cfg_file.rpartition("/")
        allowed = ", ".join(exc.options or []) or "none"
        return f"{group}={option}: unknown option for config group '{group}'; allowed: {allowed}"
    if isinstance(exc, OverrideParseException):
        return f"could not parse override {exc.override!r}: {exc.message.splitlines()[0]}"
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    key = getattr(cause, "full_key", None)
    if key and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return _unknown_key(key, base_cfg, schema)
    if key and isinstance(cause, ValidationError):
        return _wrong_type(key, base_cfg, overrides or [], cause)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _parsed(overrides: list[str]) -> dict:
    """Overrides by key, in order of first appearance, a later one for a key replacing an earlier one (Hydra's
    rule for the command line and a sweeper's params)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    by_key: dict = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        by_key[o.get_key_element()] = o
    return by_key


def _sweep_jobs(overrides: list[str], sweeper_params: dict) -> list[list[str]]:
    """The override lists of every job a basic-sweeper multirun launches, in its order: the cartesian product
    of each key's values, the sweeper's params first and the command line's after them."""
    by_key = _parsed([f"{k}={v}" for k, v in sweeper_params.items()] + overrides)
    values = [[f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
              else [f"{key}={o.get_value_element_as_str()}"] for key, o in by_key.items()]
    return [list(job) for job in itertools.product(*values)]


def _optuna_jobs(overrides: list[str], sweeper_params: dict) -> list[list[str]]:
    """Jobs that stand for an Optuna search's space (the sweeper samples inside it): the base job (the fixed
    overrides), then the base job with each value of each choice or range and with each endpoint of each
    interval, one at a time (combinations are not composed: about 0.2 s each). A later sweep of a key replaces
    an earlier one, a fixed value replaces a sweep. Raises ValueError for an interval that Optuna cannot
    sample."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in sweeper_params.items()] + overrides)
    fixed = {o.get_key_element(): o.input_line for o in parsed if not o.is_sweep_override()}
    sweeps = {o.get_key_element(): o for o in parsed if o.is_sweep_override()}
    base = list(fixed.values())
    jobs = [base]
    for key, o in sweeps.items():
        if key in fixed:
            continue
        if o.is_interval_sweep():
            sweep = o.value()
            if not sweep.start < sweep.end or ("log" in sweep.tags and sweep.start <= 0):
                need = "0 < start < end (a log interval)" if "log" in sweep.tags else "start < end"
                raise ValueError(f"{key}: an Optuna interval needs {need}, got interval({sweep.start}, {sweep.end})")
            values = [sweep.start, sweep.end]
        else:
            values = list(o.sweep_string_iterator())
        jobs += [[f"{key}={v}", *base] for v in values]
    return jobs


def _fixed(overrides: list[str]) -> list[str]:
    """The overrides that are not sweeps (``seed=0,1`` is one): what every job of a multirun shares."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if not o.is_sweep_override()]


def _shown(job: list[str]) -> str:
    """A job's overrides as a message names it: without Hydra's own (``hydra.sweep.dir=...``)."""
    return " ".join(o for o in job if not o.lstrip("+~").startswith("hydra"))


def _job_context(compose, config_name: str, job: list[str], base_cfg):
    """The config that a failing job's key overrides apply to: its option choices (``reg=none``) composed
    without the key overrides, else the default config."""
    choices = [o for o in job if "." not in o.split("=", 1)[0] and "/" not in o.split("=", 1)[0]]
    try:
        return compose(config_name=config_name, overrides=choices)
    except Exception:
        return base_cfg


def prevalidate(argv: list[str], prog: str = "nsrun", config_dir: str = CONF_DIR, config_name: str = "config",
                validate=None, skip_on_cfg: bool = False) -> list[list[str]] | None:
    """Compose and validate every job of this command (the sweeper's params included) with ``validate``
    (default: nsrun's schema, ``nsrun.runner.config.validate``, then its ``preflight`` unless the jobs run on
    SLURM, where each job runs it on its node); print ``{prog}: error: ...`` and exit 2 on the first bad one.
    ``skip_on_cfg``: do not validate for ``--cfg`` (when validation is expensive, e.g. loads a model).
    Returns the override lists of a multirun's jobs, in Hydra's job order, when the sweeper fixes them
    beforehand (not an Optuna search); else None."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra

    from nsrun.runner.errors import ConfigError

    schema = validate is None
    if schema:
        from nsrun.runner.config import preflight, validate

    refusal = io.StringIO()
    try:
        with contextlib.redirect_stderr(refusal):  # argparse's usage text: one line instead
            args = get_args_parser().parse_args(argv)
    except SystemExit:
        reason = refusal.getvalue().strip().splitlines()[-1:] or [""]
        fail(f"{reason[0].partition('error: ')[2] or 'could not parse the command line'}; see {prog} --help",
             prog=prog)
    if args.help and schema and not args.config_dir and not args.config_name:
        print_help(config_dir, config_name, list(args.overrides), prog)
        sys.exit(0)
    if args.help or args.hydra_help or args.shell_completion or args.info or getattr(args, "version", False):
        return
    if skip_on_cfg and args.cfg:
        return
    config_dir = os.path.abspath(args.config_dir) if args.config_dir else config_dir
    config_name = args.config_name or config_name
    overrides = list(args.overrides)
    GlobalHydra.instance().clear()
    base_cfg, job, jobs, checked, planned = None, overrides, [overrides], set(), None
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            base_cfg = compose(config_name=config_name)
            remote = False
            if args.multirun:
                hydra_cfg = compose(config_name=config_name, overrides=_fixed(overrides), return_hydra_config=True)
                remote = "Slurm" in str(hydra_cfg.hydra.launcher.get("_target_", ""))
                params = dict(hydra_cfg.hydra.sweeper.get("params") or {})
                if "optuna" in str(hydra_cfg.hydra.sweeper.get("_target_", "")).lower():
                    try:
                        jobs = _optuna_jobs(overrides, params)
                    except ValueError as e:
                        fail(str(e), prog=prog)
                else:
                    jobs = planned = _sweep_jobs(overrides, params)
            for job in jobs[:MAX_VALIDATED_JOBS]:
                cfg = compose(config_name=config_name, overrides=job)
                try:
                    validate(cfg)
                    if schema and not remote and not args.cfg:
                        key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["train", "task"]), resolve=True)
                        if key not in checked:
                            checked.add(key)
                            preflight(cfg)
                except ConfigError as e:
                    prefix = f"[job {_shown(job)}] " if len(jobs) > 1 else ""
                    fail(f"{prefix}{e}", prog=prog)
            if schema and not args.cfg:
                key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
                problem = output_dir_problem(compose(config_name=config_name, overrides=_fixed(overrides),
                                                     return_hydra_config=True), key)
                if problem:
                    fail(f"{key}: {problem}; choose another {key}", prog=prog)
    except SystemExit:
        raise
    except Exception as e:  # Hydra's composition and override errors
        context, prefix = base_cfg, ""
        if base_cfg is not None:
            with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
                context = _job_context(compose, config_name, job, base_cfg)
            prefix = f"[job {_shown(job)}] " if len(jobs) > 1 else ""
        fail(prefix + format_hydra_error(e, context, schema, job), prog=prog)
    finally:
        GlobalHydra.instance().clear()
    return planned


def output_dir_problem(hydra_cfg: DictConfig, key: str) -> str | None:
    """Why the directory ``key`` (hydra.run.dir, hydra.sweep.dir) names cannot be created or written: a file
    there or above it, a folder that is not writable (a read-only file system too); None when it can, or when
    the path resolves only inside a job (it interpolates hydra.job.*)."""
    try:
        path = Path(str(OmegaConf.select(hydra_cfg, key, throw_on_resolution_failure=True)))
    except Exception:
        return None
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a directory"
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        return f"cannot create {path}: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{path} is not writable" if existing == path.absolute() else \
            f"cannot create {path}: {existing} is not writable"
    return None


def print_help(config_dir: str, config_name: str, overrides: list[str], prog: str = "nsrun") -> None:
    """``nsrun --help [overrides]``: conf/config.yaml's ``hydra.help.template``, resolved on the composed config
    (its groups come from the ``nsrun_groups`` resolver). Hydra's own --help prints the same text but first
    lists every config group, rebuilding its config repository for each group (about a second each); nsrun's
    template does not use those listings."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
            print(cfg.hydra.help.template)
    except Exception as e:
        fail(format_hydra_error(e, None, overrides=overrides), prog=prog)
    finally:
        GlobalHydra.instance().clear()
