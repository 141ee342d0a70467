"""The run directory (nsrun/runner/rundir.py): one writer at a time, a refused or failed command changes nothing,
torn or foreign checkpoints and torn metrics rows, and the run directory printed at start and end."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from nsrun.runner.errors import UsageError
from nsrun.runner.outcome import DoneInfo, RunOutcome
from nsrun.runner.rundir import RunDir, read_jsonl
from nsrun.runner.science_key import science_config
from nsrun.runner.train import train
from tests.conftest import TINY, compose_cfg, run_cli

# long enough (a second or more after its first checkpoint) to be paused or killed while it trains
SLOW = ["task.p=23", "task.train_fraction=0.5", "model=small", "reg=none", "train.threads=1", "train.progress=log",
        "optim.warmup_steps=0", "logger=none", "train.steps=400", "train.eval_every=50",
        "train.checkpoint_every=50", "stability.enabled=false"]
QUICK = [*TINY, "reg=none", "train.steps=20", "train.eval_every=10", "train.checkpoint_every=10"]


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def popen(args, cwd):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen([sys.executable, "-m", "nsrun.commands.nsrun", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.02)


def test_second_writer_is_refused_and_the_first_record_stays_intact(tmp_path):
    run = tmp_path / "x"
    first = popen([*SLOW, f"hydra.run.dir={run}"], cwd=tmp_path)
    wait_for(run / "checkpoints" / "last.pt", first)
    first.send_signal(signal.SIGSTOP)  # paused while it holds the lock, however long the second takes to start
    try:
        before = snapshot(run)
        second = run_cli([*SLOW, f"hydra.run.dir={run}"], cwd=tmp_path)
        after = snapshot(run)
    finally:
        first.send_signal(signal.SIGCONT)
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert str(run) in lines[0] and f"pid {first.pid}" in lines[0] and socket.gethostname() in lines[0]
    assert "resuming" not in second.stdout + second.stderr
    assert after == before and (run / ".hydra" / "config.yaml").exists()
    assert first.wait(timeout=300) == 0
    train(compose_cfg(SLOW), tmp_path / "lone")
    assert (run / "metrics.jsonl").read_bytes() == (tmp_path / "lone" / "metrics.jsonl").read_bytes()


def test_a_killed_writer_leaves_no_stale_lock(tmp_path, caplog):
    run = tmp_path / "x"
    proc = popen([*SLOW, f"hydra.run.dir={run}"], cwd=tmp_path)
    wait_for(run / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not RunDir(run).is_locked() and RunDir(run).status() == "in progress"
    t0 = time.time()
    with caplog.at_level(logging.INFO):
        train(compose_cfg([*SLOW, "train.steps=300"]), run)
    assert "resuming" in caplog.text and time.time() - t0 < 120
    assert RunDir(run).status() == "done"


def test_lock_is_held_for_the_run_and_readers_see_in_progress(tmp_path):
    d = RunDir(tmp_path / "r")
    (tmp_path / "r").mkdir()
    d.config_path.write_text("seed: 0\n")
    with d.lock():
        d.claim()
        assert d.is_locked() and d.status() == "in progress"
        with pytest.raises(UsageError, match=f"pid {os.getpid()}"):
            with RunDir(d.path).lock():
                pass
    assert not d.is_locked()
    outcome = RunOutcome("stopped", 5, "stopped: val_acc >= 0.95 held for 10 steps (past the level since step 0)",
                         "val_acc", "above", 0.95, 0)
    d.mark_done(5, outcome)
    assert d.status() == "done" and d.done_info() == DoneInfo(5, outcome)


@pytest.fixture(scope="module")
def quick_cli_run(tmp_path_factory):
    """QUICK trained once through the console script: its run directory (Hydra's record included) and its output.
    Each test works on a copy of it."""
    run = tmp_path_factory.mktemp("quick") / "run"
    res = run_cli([*QUICK, f"hydra.run.dir={run}"], cwd=run.parent)
    assert res.returncode == 0, res.stderr
    return run, res.stdout + res.stderr


@pytest.fixture
def run(quick_cli_run, tmp_path):
    shutil.copytree(quick_cli_run[0], tmp_path / "run")
    return tmp_path / "run"


def must_not_start(root):
    raise AssertionError(f"{root.path}: the run started (Hydra's record would be written now)")


def refusal_line(cfg, run, caplog, capfd) -> str:
    """The one line with which ``train(cfg, run)`` is refused (the console script prints it after ``nsrun: error:``),
    before the run starts, and with nothing else said: no warning, no log record above INFO, no output."""
    with warnings.catch_warnings(), caplog.at_level(logging.INFO), pytest.raises(UsageError) as refused:
        warnings.simplefilter("error")  # what the console script would print; DeprecationWarning it does not
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        train(cfg, run, on_start=must_not_start)
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.INFO] == []
    assert capfd.readouterr() == ("", "")
    assert "\n" not in str(refused.value)
    return str(refused.value)


def test_every_run_prints_its_run_directory_at_start_and_end(quick_cli_run):
    run, out = quick_cli_run
    assert f"run directory: {run}" in out and f"finished: {run}" in out


def test_refused_rerun_changes_no_file_hydra_record_included(run, tmp_path):
    assert (run / ".hydra" / "config.yaml").exists() and (run / ".hydra" / "overrides.yaml").exists()
    before = snapshot(run)
    res = run_cli([*QUICK, "task.p=29", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert res.returncode == 2 and "different config: task.p" in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1
    assert snapshot(run) == before


def test_corrupt_last_checkpoint_resumes_from_the_previous_one(run, caplog):
    reference = (run / "metrics.jsonl").read_bytes()
    (run / "DONE").unlink()
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # torn by a crash mid-copy
    with caplog.at_level(logging.INFO):
        train(compose_cfg(QUICK), run)
    assert "last.pt is truncated or corrupt" in caplog.text and "resuming from previous.pt (step 10)" in caplog.text
    assert (run / "metrics.jsonl").read_bytes() == reference


def test_no_loadable_checkpoint_is_one_line_and_changes_nothing(run, caplog, capfd):
    (run / "DONE").unlink()
    for name in ("last.pt", "previous.pt"):
        (run / "checkpoints" / name).write_bytes(b"PK\x03\x04 not a zip")
    before = snapshot(run)
    line = refusal_line(compose_cfg(QUICK), run, caplog, capfd)
    assert "last.pt" in line and "delete" in line
    assert snapshot(run) == before


class Payload:  # pickled by reference: loading it would need code, which weights_only refuses
    def __reduce__(self):
        return (print, ("this would run code",))


def test_foreign_checkpoint_is_refused_in_one_line(run, caplog, capfd):
    import torch

    (run / "DONE").unlink()
    torch.save({"step": 10, "model": Payload()}, run / "checkpoints" / "last.pt", pickle_module=pickle)
    line = refusal_line(compose_cfg(QUICK), run, caplog, capfd)  # nothing printed: "this would run code" neither
    assert "not an nsrun checkpoint: refused to load" in line and "weights_only" not in line


class Runs:  # a plain pickle (protocol 4, not torch's zip format) whose loading would run code
    def __reduce__(self):
        return (os.system, ("echo this would run code",))


@pytest.mark.parametrize("damage", ["torn", "foreign"])
def test_a_refused_extension_changes_no_file_hydra_record_and_lock_included(run, damage, caplog, capfd):
    """Extending a run (train.steps 20 -> 30) whose checkpoints do not load, or are not nsrun's, is refused in one
    line before Hydra's record (written once the run starts), the lock's holder or any other file changes."""
    if damage == "torn":
        for name in ("last.pt", "previous.pt"):
            path = run / "checkpoints" / name
            path.write_bytes(path.read_bytes()[:1000])
    else:
        (run / "checkpoints" / "last.pt").write_bytes(pickle.dumps(Runs(), protocol=4))
    before = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert b"pid " in before[Path(".lock")]  # the console script's run claimed it
    line = refusal_line(compose_cfg([*QUICK, "train.steps=30"]), run, caplog, capfd)
    if damage == "torn":
        assert line.startswith(f"checkpoint {run}/checkpoints/last.pt is truncated or corrupt")
        assert "and no earlier checkpoint loads; delete" in line and "miniz" not in line
    else:
        assert line == (f"not an nsrun checkpoint: refused to load {run}/checkpoints/last.pt (it "
                        "needs code to unpickle, which nsrun never runs)")
    assert {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


def test_torn_metrics_row_at_the_checkpoint_step_is_restored(run):
    reference = (run / "metrics.jsonl").read_text()
    (run / "DONE").unlink()
    lines = reference.splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    train(compose_cfg(QUICK), run)
    assert (run / "metrics.jsonl").read_text() == reference


def test_science_key_ignores_what_does_not_change_metrics():
    a = {"seed": 0, "train": {"steps": 10, "threads": 1}, "reg": {"name": "none", "rho": 0.25, "gamma": 0.0},
         "logger": {"name": "wandb"}}
    b = {"seed": 0, "train": {"steps": 99, "threads": "auto"}, "reg": {"name": "none"}, "logger": {"name": "none"},
         "stop": {"name": "onset"}, "experiment": {"name": "x"}}
    assert science_config(a) == science_config(b)
    assert science_config(a) != science_config({**b, "seed": 1})


def test_torn_lines_are_skipped_by_the_reader(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "val')
    assert read_jsonl(path) == [{"step": 0}, {"step": 1}]
