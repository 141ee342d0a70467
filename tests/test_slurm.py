"""Sweeps on a real single-node SLURM cluster (launch/slurm-local.sh), through hydra/launcher=submitit_slurm.

The session fixture brings the cluster up with the project's own script (installing Debian's SLURM and
munge when missing, which needs root and apt-get) and always tears it down again, unless it was already
running before the tests (`make slurm-up`), in which case it is left as it was. Deselect with -m 'not slurm'.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from nsrun.runner import checkpoint
from nsrun.runner.rundir import read_jsonl
from nsrun.runner.train import run_id_for, train
from tests.conftest import ROOT, compose_cfg, run_cli

pytestmark = pytest.mark.slurm

SCRIPT = ROOT / "launch" / "slurm-local.sh"
LAUNCHER = ["hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1"]
TINY_RUN = ["task.p=23", "task.train_fraction=0.5", "model=tiny", "train.threads=1", "train.progress=none",
            "optim.warmup_steps=0", "logger=none", "train.steps=20", "train.eval_every=10", "reg=none"]
# long enough (several seconds after its first checkpoint) to be preempted while it trains
PREEMPTIBLE = ["task.p=23", "task.train_fraction=0.5", "model=small", "train.threads=1", "train.progress=log",
               "optim.warmup_steps=0", "train.steps=600", "train.eval_every=50",
               "train.checkpoint_every=50", "seed=0", "reg=none"]


def _script(*args, timeout=900):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_env():
    """A running local SLURM cluster; yields the environment its clients need."""
    started = False
    if _script("status", timeout=60).returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("the local SLURM cluster (launch/slurm-local.sh up) needs root")
        daemons = all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))
        if not daemons and not shutil.which("apt-get"):
            pytest.skip("SLURM/munge are not installed and there is no apt-get to install them")
        started = True
        up = _script("up")
        if up.returncode != 0:
            _script("down", timeout=120)
            pytest.fail(f"launch/slurm-local.sh up failed:\n{up.stdout}\n{up.stderr}")
    try:
        conf = _script("env", timeout=30).stdout.strip().partition("SLURM_CONF=")[2]
        yield {"SLURM_CONF": conf}
    finally:
        if started:
            down = _script("down", timeout=300)
            assert down.returncode == 0, down.stderr


def _squeue(job_id, env) -> tuple[str, str]:
    """(state, reason) of a job, ('', '') when squeue does not know it."""
    res = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T|%r"], capture_output=True,
                         text=True, env={**os.environ, **env})
    state, _, reason = res.stdout.strip().partition("|")
    return state, reason


def _sweep(args, env, timeout=300):
    return run_cli(["-m", *LAUNCHER, *args], env=env, timeout=timeout)


def test_two_job_sweep_runs_each_job_under_slurm(slurm_env, tmp_path):
    sweep = tmp_path / "sweep"
    t0 = time.time()
    res = _sweep([*TINY_RUN, "seed=0,1", f"hydra.sweep.dir={sweep}"], slurm_env)
    wall = time.time() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"2-job sweep on the local SLURM cluster: {wall:.1f}s")
    job_ids = set()
    for n in (0, 1):
        run = sweep / str(n)
        (row,) = read_jsonl(run / "slurm.jsonl")
        assert row["SLURM_JOB_ID"] and row["SLURM_ARRAY_TASK_ID"] == str(n) and row["SLURM_RESTART_COUNT"] == "0"
        job_ids.add(row["SLURM_JOB_ID"])
        assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [0, 10, 20]
        assert (run / "DONE").exists() and (run / ".hydra" / "overrides.yaml").exists()
        assert f"seed={n}" in (run / ".hydra" / "overrides.yaml").read_text()
    assert len(job_ids) == 2
    assert (sweep / "multirun.yaml").exists()
    assert len(list((sweep / ".submitit").glob("*_[01]/*_log.out"))) == 2  # Hydra's layout, submitit's logs


def test_failing_job_is_reported_and_others_finish(slurm_env, tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "1").mkdir(parents=True)
    (sweep / "1" / "resolved_config.yaml").write_text("seed: 99\n")  # job #1 will refuse this run directory
    res = _sweep([*TINY_RUN, "seed=0,1", f"hydra.sweep.dir={sweep}"], slurm_env)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "nsrun: 1 of 2 jobs failed (1 finished):" in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("  #1 ")]
    assert "seed=1" in line and "different config" in line
    log = line.split("; log: ")[1].split(",")[0]
    assert os.path.exists(log) and "/.submitit/" in log
    assert (sweep / "0" / "DONE").exists() and not (sweep / "1" / "DONE").exists()


def _wait(predicate, timeout, what, proc=None):
    t0 = time.time()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the sweep ended while waiting for {what}:\n{out}")
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """PREEMPTIBLE trained to the end in this process (the logger changes no metric): its metrics.jsonl."""
    ref = tmp_path_factory.mktemp("ref")
    train(compose_cfg([*PREEMPTIBLE, "logger=none"]), ref)
    return (ref / "metrics.jsonl").read_bytes()


@pytest.mark.parametrize("how,logger", [("usr2", "wandb"), ("requeue", "none")])
def test_preempted_job_is_requeued_and_resumes_to_identical_metrics(slurm_env, tmp_path, how, logger, uninterrupted):
    """usr2: SIGUSR2 to the job's steps, as SLURM sends it before the time limit; nsrun checkpoints and
    submitit requeues. requeue: `scontrol requeue` (SIGTERM, as on preemption); nsrun checkpoints and exits.
    With the wandb logger (offline), both attempts log to the same wandb run."""
    t_start = time.time()
    config = [*PREEMPTIBLE, f"logger={logger}"]

    sweep = tmp_path / "sweep"
    run = sweep / "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nsrun.commands.nsrun", "-m", *LAUNCHER, *config, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **slurm_env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ckpt = run / "checkpoints" / "last.pt"
        _wait(lambda: ckpt.exists() and (run / "slurm.jsonl").exists(), 180, "the first checkpoint", proc)
        job_id = read_jsonl(run / "slurm.jsonl")[0]["SLURM_JOB_ID"]
        if how == "usr2":
            cmd = ["scancel", "--signal=USR2", job_id]
        else:
            cmd = ["scontrol", "requeue", job_id]
        subprocess.run(cmd, check=True, env={**os.environ, **slurm_env})
        # requeued: pending again (SLURM holds a requeued job back ~2 minutes; start it now instead)
        _wait(lambda: _squeue(job_id, slurm_env)[0] == "PENDING", 90, "the requeued job", proc)
        stopped_at = checkpoint.load(ckpt)["step"]
        run_id = checkpoint.load(ckpt)["run_id"]
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True,
                       env={**os.environ, **slurm_env})
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    print(f"preemption ({how}) test: {time.time() - t_start:.1f}s")

    rows = read_jsonl(run / "slurm.jsonl")
    assert [r["SLURM_JOB_ID"] for r in rows] == [job_id, job_id]
    assert [r["SLURM_RESTART_COUNT"] for r in rows] == ["0", "1"]
    assert 0 < stopped_at < 600
    log = (run / "nsrun.log").read_text()
    assert f"checkpoint written at step {stopped_at}" in log
    assert f"resuming {run} from step {stopped_at}" in log  # not from step 0
    if how == "usr2":
        assert "Caught signal SIGUSR2" in log and f"Requeued job {job_id}" in log
    final = checkpoint.load(run / "checkpoints" / "last.pt")
    assert final["step"] == 600 and final["run_id"] == run_id == run_id_for(run)  # same wandb run id
    if logger == "wandb":
        attempts = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
        assert len(attempts) == 2 and all(name.endswith(f"-{run_id}") for name in attempts), attempts
    assert (run / "metrics.jsonl").read_bytes() == uninterrupted
    steps = [json.loads(line)["step"] for line in (run / "timing.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))
