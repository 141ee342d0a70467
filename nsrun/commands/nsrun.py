"""The ``nsrun`` command: a thin ``@hydra.main`` entry point.

Before Hydra starts a run or a sweep, every config it would launch is composed and validated
(:mod:`nsrun.commands.precheck`), so that bad input gives one line on stderr naming the key and what is allowed,
exit code 2, and no run directory is created or touched; ``--help`` is :mod:`nsrun.commands.help_text`. Heavy
imports (torch, wandb, datasets) happen only inside a job.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from nsrun.commands import help_text  # noqa: F401  (registers the resolver of conf/config.yaml's help template)
from nsrun.commands.precheck import fail, prevalidate
from nsrun.runner.config import CONF_DIR  # also registers the config schema that conf/'s option files name


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


def main() -> None:
    from nsrun.launch.slurm import silence_schema_warning
    from nsrun.launch.sweep_stop import RECORD, SweepStopped
    from nsrun.runner.threads import prepare_environment

    prepare_environment()  # OpenMP's wait policy, before anything imports torch (nsrun/runner/threads.py)
    logging.raiseExceptions = False  # a log line that a full disk cannot take is dropped, not a traceback per line
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
