"""The ``nsrun`` command: a thin ``@hydra.main`` entry point.

Before Hydra starts a run or a sweep, every config it would launch is composed and validated here, so
that bad input gives one line on stderr naming the key and what is allowed, exit code 2, and no run
directory is created or touched. Heavy imports (torch, wandb, datasets) happen only inside a job.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONF_DIR = os.environ.get("NSRUN_CONFIG_DIR", str(Path(__file__).resolve().parents[2] / "conf"))
MAX_VALIDATED_JOBS = 1024


def fail(message: str, code: int = 2, prog: str = "nsrun") -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def _child_keys(cfg, parent: str) -> list[str]:
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []


def format_hydra_error(exc: BaseException, base_cfg: DictConfig | None) -> str:
    """One line for a Hydra composition/override error."""
    msg = str(exc)
    if msg.startswith("Error merging override") and exc.__cause__ is not None:  # e.g. a typed hydra.launcher key
        return format_hydra_error(exc.__cause__, base_cfg)
    m = re.search(r"Could not find '([^']+)/([^'/]+)'", msg)
    if m:
        group, option = m.group(1), m.group(2)
        opts = re.search(r"Available options in '[^']+':\s*\n((?:\s*\t.*\n?)*)", msg)
        allowed = ", ".join(o.strip() for o in opts.group(1).splitlines() if o.strip()) if opts else "none"
        return f"{group}={option}: unknown option for config group '{group}'; allowed: {allowed}"
    m = re.search(r"Key '([^']+)' is not in struct\s*\n\s*full_key: (\S+)", msg)
    if m:
        full = m.group(2)
        parent = full.rpartition(".")[0]
        keys = _child_keys(base_cfg, parent) if base_cfg is not None else []
        where = f" under '{parent}'" if parent else ""
        return f"{full}: unknown key; allowed keys{where}: {', '.join(keys)}"
    m = re.search(r"Could not override '([^']+)'", msg)
    if m:
        full = m.group(1)
        parent = full.rpartition(".")[0]
        keys = _child_keys(base_cfg, parent) if base_cfg is not None else []
        where = f"under '{parent}'" if parent else "at the top level"
        if not keys:  # e.g. hydra.launcher.*, not in the composed job config
            return f"{full}: unknown key"
        return f"{full}: unknown key; allowed keys {where}: {', '.join(keys)}"
    m = re.search(r"Error parsing override '([^']+)'", msg)
    if isinstance(exc, Exception) and type(exc).__name__ == "OverrideParseException":
        return f"could not parse override{' ' + repr(m.group(1)) if m else ''}: {msg.splitlines()[0]}"
    m = re.search(r"Value '(.*?)' (?:of type '\w+' )?could not be converted to (\w+)\s*\n\s*full_key: (\S+)", msg)
    if m:
        return f"{m.group(3)}: expected {m.group(2).lower()}, got {m.group(1)!r}"
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


def prevalidate(argv: list[str], prog: str = "nsrun", config_dir: str = CONF_DIR, config_name: str = "config",
                validate=None, skip_on_cfg: bool = False) -> None:
    """Compose and validate every job of this command (the sweeper's params included) with ``validate``
    (default ``nsrun.runner.config.validate``); print ``{prog}: error: ...`` and exit 2 on the first bad one.
    ``skip_on_cfg``: do not validate for ``--cfg`` (when validation is expensive, e.g. loads a model)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra

    from nsrun.runner.errors import ConfigError

    if validate is None:
        from nsrun.runner.config import validate

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
    base_cfg = None
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            base_cfg = compose(config_name=config_name)
            if args.multirun:
                try:
                    hydra_cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
                    params = dict(hydra_cfg.hydra.sweeper.get("params") or {})
                except Exception:
                    params = {}
                jobs = _sweep_jobs(overrides, params)
            else:
                jobs = [overrides]
            for job in jobs[:MAX_VALIDATED_JOBS]:
                cfg = compose(config_name=config_name, overrides=job)
                try:
                    validate(cfg)
                except ConfigError as e:
                    prefix = f"[job {' '.join(job)}] " if len(jobs) > 1 else ""
                    fail(f"{prefix}{e}", prog=prog)
    except SystemExit:
        raise
    except Exception as e:  # Hydra's composition and override errors
        fail(format_hydra_error(e, base_cfg), prog=prog)
    finally:
        GlobalHydra.instance().clear()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_entry(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from nsrun.launch.slurm import record_slurm_env, submitit_executor
    from nsrun.runner.errors import ConfigError, UsageError
    from nsrun.runner.train import Interrupted, train

    run_dir = HydraConfig.get().runtime.output_dir
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    record_slurm_env(run_dir)  # slurm.jsonl: job id, restart count, node (only inside a SLURM job)
    try:
        return train(cfg, run_dir)
    except (ConfigError, UsageError) as e:
        if multirun:
            raise
        fail(str(e))
    except Interrupted as e:
        # in a submitit job (SIGTERM: preemption, scontrol requeue, scancel) exit without a result, so that
        # SLURM's requeue reruns the job from the checkpoint and a cancel is reported as a failure
        if multirun and not submitit_executor():
            raise
        fail(str(e), code=130)


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

    if {"--help", "-h", "--hydra-help"} & set(sys.argv[1:]):
        reuse_group_listing_repository()

    silence_schema_warning()  # nsrun's defaults for hydra/launcher=submitit_slurm (conf/hydra/launcher/)
    prevalidate(sys.argv[1:])
    hydra_entry()


if __name__ == "__main__":
    main()
