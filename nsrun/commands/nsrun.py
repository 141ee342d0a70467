"""The ``nsrun`` command: a thin ``@hydra.main`` entry point.

Before Hydra starts a run or a sweep, every config it would launch is composed and validated here, so
that bad input gives one line on stderr naming the key and what is allowed, exit code 2, and no run
directory is created or touched. Heavy imports (torch, wandb, datasets) happen only inside a job.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from nsrun.runner.config import CONF_DIR  # also registers the config schema that conf/'s option files name

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


def format_hydra_error(exc: BaseException, base_cfg: DictConfig | None, schema: bool = True) -> str:
    """One line for a Hydra composition/override error; ``base_cfg``: the config the overrides apply to (its
    selected options name the keys that exist), ``schema``: it is nsrun's config (conf/config.yaml)."""
    msg = str(exc)
    override = re.match(r"Error merging override (\S+?)=(.*)", msg)
    if override and exc.__cause__ is not None:  # a typed key (nsrun's schema, hydra.launcher)
        m = re.search(r"full_key: (\S+)", str(exc.__cause__))
        if m and "is not a ListConfig" in str(exc.__cause__):
            return f"{m.group(1)}: must be a list, got {override.group(2)!r}"
        return format_hydra_error(exc.__cause__, base_cfg, schema)
    m = re.search(r"Could not find '([^']+)/([^'/]+)'", msg)
    if m:
        group, option = m.group(1), m.group(2)
        opts = re.search(r"Available options in '[^']+':\s*\n((?:\s*\t.*\n?)*)", msg)
        allowed = ", ".join(o.strip() for o in opts.group(1).splitlines() if o.strip()) if opts else "none"
        return f"{group}={option}: unknown option for config group '{group}'; allowed: {allowed}"
    m = re.search(r"Key '([^']+)' is not in struct\s*\n\s*full_key: (\S+)", msg) or re.search(
        r"Could not override '([^']+)'", msg)
    if m:
        return _unknown_key(m.group(m.lastindex), base_cfg, schema)
    m = re.search(r"Error parsing override '([^']+)'", msg)
    if isinstance(exc, Exception) and type(exc).__name__ == "OverrideParseException":
        return f"could not parse override{' ' + repr(m.group(1)) if m else ''}: {msg.splitlines()[0]}"
    m = re.search(r"field '([^']+)' is not Optional", msg)
    if m:
        return f"{m.group(1)}: must not be null"
    m = re.search(r"could not be converted to \w+\s*\n\s*full_key: (\S+)", msg)
    if m:
        from nsrun.runner.config import type_error

        return str(type_error(m.group(1), exc))
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip() and not ln.startswith("Set the environment")]
    return " ".join(lines[:2]) if lines else type(exc).__name__


def _sweep_jobs(overrides: list[str], sweeper_params: dict) -> list[list[str]]:
    """The override lists of every job a basic-sweeper multirun would launch."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in sweeper_params.items()]
    parsed = OverridesParser.create().parse_overrides(params + overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def _optuna_jobs(overrides: list[str], sweeper_params: dict) -> list[list[str]]:
    """Jobs that stand for an Optuna search's space (hydra-optuna-sweeper samples inside it): the base job (the
    fixed overrides), then the base job with each value of each choice or range and with each endpoint of each
    interval, one at a time (combinations are not composed: about 0.2 s each). The sweeper's precedence holds: a
    later sweep of a key replaces an earlier one, a fixed value replaces a sweep. Raises ValueError for an
    interval that Optuna cannot sample."""
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

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        fail(f"could not parse the command line; see {prog} --help", prog=prog)
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
        fail(prefix + format_hydra_error(e, context, schema), prog=prog)
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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_entry(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from nsrun.launch import sweep_stop
    from nsrun.launch.slurm import record_slurm_env, submitit_executor
    from nsrun.runner.errors import ConfigError, StorageError, TrainingError, UsageError
    from nsrun.runner.signals import catch_stop_signals, exit_code, received
    from nsrun.runner.train import Interrupted, run_objective, train

    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    local_sweep = multirun and not submitit_executor()
    if local_sweep:  # the jobs run in this process, one after another (or in a local pool's worker)
        catch_stop_signals()
        if received() is not None:
            raise sweep_stop.SweepStopped(received())  # this job does not start
    kind, where = ("sweep", hydra_cfg.sweep.dir) if multirun else ("run", hydra_cfg.run.dir)
    sweep_stop.RECORD.rerun = sweep_stop.rerun_hint(kind, where, hydra_cfg.overrides.hydra)
    job = sweep_stop.JobOutcome(int(hydra_cfg.job.num) if multirun else 0, list(hydra_cfg.overrides.task),
                                sweep_stop.RUNNING)
    if local_sweep:
        sweep_stop.record(job)

    def on_start(root):  # the writer lock is held and the config matches: the record may change now
        root.write_hydra_record(hydra_record(cfg, hydra_cfg))
        record_slurm_env(root.path)  # slurm.jsonl: job id, restart count, node (only inside a SLURM job)

    try:
        train(cfg, run_dir, on_start=on_start)
        result = run_objective(cfg, run_dir)
    except (ConfigError, UsageError) as e:
        if not multirun:
            fail(str(e))
        job.state, job.error = sweep_stop.FAILED, str(e)
        raise
    except (StorageError, TrainingError) as e:  # a disk that fills, a loss that becomes nan: exit 1
        if not multirun:
            fail(str(e), code=1)
        job.state, job.error = sweep_stop.FAILED, str(e)
        raise
    except Interrupted as e:
        if submitit_executor():
            # exit without a result, so that SLURM's requeue (preemption, scontrol requeue) reruns the job from
            # the checkpoint and a cancel (scancel: SIGTERM) is reported as a failure
            print(f"nsrun: {e}", file=sys.stderr)
            sys.exit(130)
        if multirun:
            job.state, job.step = sweep_stop.STOPPED, e.step
            raise sweep_stop.SweepStopped(e.signum, job) from None
        print(f"nsrun: {e}; {sweep_stop.RECORD.rerun}", file=sys.stderr)
        sys.exit(exit_code(e.signum))
    except Exception as e:
        job.state, job.error = sweep_stop.FAILED, f"{type(e).__name__}: {e}".splitlines()[0]
        raise
    job.state = sweep_stop.FINISHED
    if local_sweep and received() is not None:  # the signal came in the job's last step: start no further job
        raise sweep_stop.SweepStopped(received(), job)
    return result


def stopped_sweep_exit(e: BaseException, planned: list[list[str]] | None) -> None:
    """Report a sweep that a stop signal (``SweepStopped``) or a second Ctrl-C (``KeyboardInterrupt``) ended:
    one line per job and how to resume; exit with 128 + the signal."""
    import signal

    from nsrun.launch.sweep_stop import summary
    from nsrun.runner.signals import exit_code

    signum = getattr(e, "signum", signal.SIGINT)
    print("\n".join(summary(signum, planned)), file=sys.stderr)
    sys.exit(exit_code(signum))


def hydra_record(cfg: DictConfig, hydra_cfg) -> dict[str, str]:
    """What Hydra itself writes into ``RUN_DIR/.hydra/`` (conf/config.yaml sets hydra.output_subdir to null,
    so that the run directory writes it only once the run may proceed)."""
    return {"config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
            "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task)}


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


def reuse_group_listing_repository() -> None:
    """Hydra's --help lists every config group and rebuilds its config repository (a deep copy) for each
    listing, about a second for nsrun's groups; within one command the repository does not change, so the
    listings (no config name, no overrides) share one."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    build = ConfigLoaderImpl._parse_overrides_and_create_caching_repo
    shared: dict = {}

    def cached(self, config_name, overrides):
        if config_name is not None or overrides:
            return build(self, config_name, overrides)
        if id(self) not in shared:
            shared[id(self)] = build(self, config_name, overrides)
        return shared[id(self)]

    ConfigLoaderImpl._parse_overrides_and_create_caching_repo = cached


def main() -> None:
    from nsrun.launch.slurm import silence_schema_warning
    from nsrun.launch.sweep_stop import RECORD, SweepStopped
    from nsrun.runner.threads import prepare_environment

    prepare_environment()  # OpenMP's wait policy, before anything imports torch (nsrun/runner/threads.py)
    logging.raiseExceptions = False  # a log line that a full disk cannot take is dropped, not a traceback per line
    if {"--help", "-h", "--hydra-help"} & set(sys.argv[1:]):
        reuse_group_listing_repository()

    silence_schema_warning()  # nsrun's defaults for hydra/launcher=submitit_slurm (conf/hydra/launcher/)
    if ({"--cfg", "-c"} & set(sys.argv[1:])) and "--resolve" not in sys.argv:
        sys.argv.append("--resolve")  # --cfg shows the values a run will use, not their interpolations
    planned = prevalidate(sys.argv[1:])
    try:
        hydra_entry()
    except SweepStopped as e:
        stopped_sweep_exit(e, planned)
    except KeyboardInterrupt as e:  # a second Ctrl-C (the loop stops at once), or Ctrl-C before training started
        if RECORD.jobs or planned is not None:
            stopped_sweep_exit(e, planned)
        print(f"nsrun: interrupted by Ctrl-C before the current step's checkpoint; {RECORD.rerun} from the last one",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
