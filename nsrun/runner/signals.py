"""Stop signals: SIGINT (Ctrl-C), SIGTERM and SIGUSR2 ask a run to stop cleanly.

The training loop (``loop.stop_on_signals``) turns them into a flag that it checks after each step: it writes a
checkpoint and raises ``Interrupted``. A process that runs several jobs (the process of a sweep on Hydra's basic
launcher, a local pool's parent and its workers) calls :func:`catch_stop_signals` once: from then on the first
stop signal is recorded for the whole process (:func:`received`) instead of killing it, a job still in its setup
stops after its first step, and no further job starts. A stopped command exits with :func:`exit_code`.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR2", None)) if s is not None)

_process = {"catching": False, "signal": None}


def note(signum: int, frame=None) -> None:
    """Record the first stop signal of a process that catches them (a no-op in one that does not)."""
    if _process["catching"] and _process["signal"] is None:
        _process["signal"] = signum


def catch_stop_signals() -> bool:
    """From now on, a stop signal to this process is recorded (:func:`received`) instead of ending it; a running
    training loop still stops at its next step. False where signals cannot be caught (not the main thread)."""
    if _process["catching"]:
        return True
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, note)
    except ValueError:
        return False
    _process["catching"] = True
    return True


def received() -> int | None:
    """The first stop signal this process received since :func:`catch_stop_signals`, or None."""
    return _process["signal"]


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The exit code of a command stopped by ``signum``: 128 + signum, as a shell reports a process that the
    signal killed (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(signum)
