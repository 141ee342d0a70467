"""The SLURM plumbing that needs no cluster: signal hand-over to submitit, slurm.jsonl, the failure report."""

from __future__ import annotations

import os
import signal

from nsrun.launch.slurm import _one_line, record_slurm_env
from nsrun.runner.loop import stop_on_signals
from nsrun.runner.rundir import read_jsonl


def test_stop_signal_is_handed_over_to_the_previous_handler_after_the_checkpoint():
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))  # as submitit's
    try:
        with stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop["signal"] == signal.SIGUSR2 and seen == []  # the loop checkpoints first
            stop["hand_over"]()
            assert seen == [signal.SIGUSR2]
            assert signal.getsignal(signal.SIGUSR2) is not None and signal.getsignal(signal.SIGTERM) is not None
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_hand_over_without_a_python_handler_does_nothing():
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        stop["hand_over"]()  # SIG_DFL before: not called (the run raises Interrupted instead)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_slurm_facts_are_recorded_only_in_a_slurm_job(tmp_path, monkeypatch):
    for k in [k for k in os.environ if k.startswith("SLURM")]:
        monkeypatch.delenv(k)
    assert record_slurm_env(tmp_path) is None and not (tmp_path / "slurm.jsonl").exists()
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    record_slurm_env(tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    record_slurm_env(tmp_path)
    rows = read_jsonl(tmp_path / "slurm.jsonl")
    assert [(r["SLURM_JOB_ID"], r["SLURM_RESTART_COUNT"]) for r in rows] == [("42", "0"), ("42", "1")]


def test_failure_reason_is_the_last_error_line_of_a_traceback():
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad thing\n'
    assert _one_line(trace) == "ValueError: bad thing"
    assert _one_line("Job 3 has not produced any output\nmore") == "Job 3 has not produced any output"
