"""Stopping a run or a sweep with a signal, with real processes: the running jobs write their checkpoints, no
further job starts, one line per job, exit 128 + signal, no process left behind, locks released, a rerun resumes."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nsrun.runner import checkpoint
from tests.conftest import TINY

# no periodic checkpoint: the only checkpoint of an interrupted job is the one its stop wrote
STEPS = 400
JOB = [*TINY, f"train.steps={STEPS}", "train.eval_every=100", "train.checkpoint_every=100000",
       "stability.enabled=false"]
POOL = {"local_cores": ["hydra/launcher=local_cores", "hydra.launcher.n_workers=2"],
        "local_gpus": ["hydra/launcher=local_gpus", "hydra.launcher.gpus=[0,1]", "train.device=cpu"]}


def _start(args, cwd) -> subprocess.Popen:
    """``nsrun ARGS`` in its own process group (as a terminal starts a command)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, "-m", "nsrun.commands.nsrun", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"nsrun ended before {path} appeared:\n{proc.communicate()[0]}"
        assert time.time() - t0 < timeout, f"{path} did not appear in {timeout} s"
        time.sleep(0.01)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return state.split()[1] != "Z"


def _lock_is_free(run_dir: Path) -> bool:
    fd = os.open(run_dir / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


@pytest.fixture
def started():
    """Start processes with ``started(args, cwd)``; whatever is left of their groups is killed afterwards."""
    procs = []

    def start(args, cwd):
        procs.append(_start(args, cwd))
        return procs[-1]

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stopped_step(out: str, num: int, seed: int) -> int:
    m = re.search(rf"^  #{num} seed={seed}: stopped at step (\d+); checkpoint written$", out, re.M)
    assert m, out
    return int(m.group(1))


def _assert_resumes(args, sweep: Path, step: int, cwd: Path, n_jobs: int) -> None:
    """The same command again: job 0 resumes from the step its stop checkpointed, and every job finishes."""
    res = subprocess.run([sys.executable, "-m", "nsrun.commands.nsrun", *args], cwd=cwd, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"resuming {sweep / '0'} from step {step}" in out
    assert all((sweep / str(i) / "DONE").exists() for i in range(n_jobs))


@pytest.mark.parametrize("sig,rerun", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_a_signal_stops_a_sequential_sweep_and_its_rerun_resumes(tmp_path, started, sig, rerun):
    sweep = tmp_path / "sweep"
    args = ["-m", *JOB, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = started(args, tmp_path)
    _wait_for(sweep / "0" / "metrics.jsonl", proc)  # job 0 is training
    proc.send_signal(sig)
    out = _finish(proc)

    assert proc.returncode == 128 + sig, out
    assert f"nsrun: sweep stopped by signal {int(sig)} ({sig.name}); no further job started" in out
    step = _stopped_step(out, 0, 0)
    assert 0 < step < STEPS and checkpoint.load(sweep / "0" / "checkpoints" / "last.pt")["step"] == step
    assert re.search(r"^  #1 seed=1: not started$", out, re.M), out
    assert not (sweep / "1").exists()
    assert "rerun the same command to resume" in out and "Traceback" not in out and "nsrun: error" not in out
    assert _lock_is_free(sweep / "0")
    if rerun:
        _assert_resumes(args, sweep, step, tmp_path, n_jobs=2)


@pytest.mark.parametrize("launcher,sig,to_group,rerun", [
    ("local_cores", signal.SIGINT, True, False),  # Ctrl-C in a terminal: the whole process group
    ("local_gpus", signal.SIGINT, False, False),  # kill -INT PID: the parent alone (pretend GPUs, CPU training)
    pytest.param("local_cores", signal.SIGTERM, False, True, marks=pytest.mark.slow),  # kill PID, then rerun
])
def test_a_signal_stops_a_local_pool_sweep_with_its_workers(tmp_path, started, launcher, sig, to_group, rerun):
    sweep = tmp_path / "sweep"
    args = ["-m", *JOB, "seed=0,1,2", f"hydra.sweep.dir={sweep}", *POOL[launcher]]
    proc = started(args, tmp_path)
    _wait_for(sweep / "0" / "metrics.jsonl", proc)
    workers = _descendants(proc.pid)
    assert len(workers) >= 2
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out = _finish(proc)

    assert proc.returncode == 128 + sig, out
    assert f"nsrun: sweep stopped by signal {int(sig)} ({sig.name}); no further job started" in out
    step = _stopped_step(out, 0, 0)
    assert checkpoint.load(sweep / "0" / "checkpoints" / "last.pt")["step"] == step
    assert re.search(r"^  #1 seed=1: (stopped at step \d+; checkpoint written|not started)$", out, re.M), out
    assert re.search(r"^  #2 seed=2: not started$", out, re.M), out
    assert not (sweep / "2" / "metrics.jsonl").exists()
    assert "Traceback" not in out
    deadline = time.time() + 30
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "a worker outlived the sweep"
    assert all(_lock_is_free(sweep / j) for j in ("0", "1") if (sweep / j / ".lock").exists())
    if rerun:
        _assert_resumes(args, sweep, step, tmp_path, n_jobs=3)


def test_workers_of_a_killed_pool_checkpoint_and_exit(tmp_path, started):
    """SIGKILL leaves the parent no chance to stop its workers: they notice it is gone, stop like on SIGTERM (a
    checkpoint) and exit; no queued job starts."""
    sweep = tmp_path / "sweep"
    proc = started(["-m", *JOB, "seed=0,1,2", f"hydra.sweep.dir={sweep}", *POOL["local_cores"]], tmp_path)
    _wait_for(sweep / "0" / "metrics.jsonl", proc)
    workers = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 60
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "a worker outlived its killed parent"
    assert 0 < checkpoint.load(sweep / "0" / "checkpoints" / "last.pt")["step"] < STEPS
    assert _lock_is_free(sweep / "0")
    assert not (sweep / "2" / "metrics.jsonl").exists()


def test_a_stopped_run_says_how_to_resume_without_an_error(tmp_path, started):
    proc = started([*JOB], tmp_path)  # the default run directory: outputs/DATE/TIME
    t0 = time.time()
    while not list(tmp_path.glob("outputs/*/*/metrics.jsonl")):
        assert proc.poll() is None and time.time() - t0 < 180
        time.sleep(0.01)
    run_dir = next(tmp_path.glob("outputs/*/*"))
    proc.send_signal(signal.SIGTERM)
    out = _finish(proc)

    assert proc.returncode == 143, out
    step = checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"]
    assert out.splitlines()[-1] == (f"nsrun: stopped by signal 15 (SIGTERM) at step {step}; checkpoint written; "
                                    f"rerun the same command with hydra.run.dir={run_dir.relative_to(tmp_path)} "
                                    "to resume")
    assert "nsrun: error" not in out
