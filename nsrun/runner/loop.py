"""The training loop: one loop over a replicas object (one model, or K vmapped seeds), each replica with its
own run directory.

Step ``s`` means "after ``s`` optimiser updates". Metrics are evaluated at step 0, every ``eval_every`` steps
and at the last step; a checkpoint is written every ``checkpoint_every`` steps, at the end, and when the process
is interrupted (SIGINT, SIGTERM, SIGUSR2). Resuming from a checkpoint reproduces exactly the metrics of an
uninterrupted run on CPU: data order is a pure function of (seed, epoch), and every generator is checkpointed.

A replica whose training loss becomes inf or nan fails: the loop notices at its next evaluation, checkpoint or
signal (the first such step is tracked on the device, so no step waits for it), or at an evaluation whose
train_loss or val_loss is not finite, logs no row and writes no checkpoint from then on, and marks it DONE with
a ``failed`` outcome (:func:`nsrun.runner.outcome.failure`: the first step whose loss was not finite, and the
loss: nan, inf or -inf); the other replicas train on.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from nsrun.runner.checkpoint import rng_state, set_rng_state
from nsrun.runner.outcome import RunOutcome, failure
from nsrun.runner.signals import STOP_SIGNALS, note, received, signal_name

log = logging.getLogger("nsrun")


class Interrupted(Exception):
    """Raised inside the loop when stop signal ``signum`` ended the run at ``step`` (its checkpoint is written)."""

    def __init__(self, signum: int, step: int):
        super().__init__(signum, step)
        self.signum, self.step = int(signum), int(step)

    def __str__(self) -> str:
        return f"stopped by signal {self.signum} ({signal_name(self.signum)}) at step {self.step}; checkpoint written"


@dataclass
class Cadence:
    steps: int  # train until this step
    eval_every: int
    checkpoint_every: int
    progress: str = "auto"  # auto | bar | log | none


@dataclass
class LoopState:
    """Where the loop stands: restored from the checkpoints, saved into them."""
    step: int = 0
    clock: dict = field(default_factory=lambda: {"train": 0.0, "eval": 0.0})
    run_ids: list = field(default_factory=list)
    last_rows: list = field(default_factory=list)
    stopped: list = field(default_factory=list)  # per replica: the RunOutcome that ended it early, or None


class NonFiniteLoss:
    """The first step at which each replica's training loss was inf or nan, kept on the loss's device: updating it
    needs no synchronisation; :meth:`read` syncs once."""

    def __init__(self):
        self.first_step: torch.Tensor | None = None  # [K], -1 while every loss was finite
        self.value: torch.Tensor | None = None

    def update(self, losses: torch.Tensor, step: int) -> None:
        if self.first_step is None:
            self.first_step = torch.full(losses.shape, -1, dtype=torch.long, device=losses.device)
            self.value = torch.zeros_like(losses)
        new = ~torch.isfinite(losses) & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.value = torch.where(new, losses, self.value)

    def read(self, k: int) -> RunOutcome | None:
        """Replica k's outcome once its loss was not finite, else None."""
        if self.first_step is None or int(self.first_step[k]) < 0:
            return None
        return failure(int(self.first_step[k]), _kind(float(self.value[k])))


def _kind(value: float) -> str:
    return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM/SIGUSR2 into a flag the loop checks after each step (so a checkpoint is never taken
    mid-update); a second SIGINT stops at once. Handlers are restored afterwards. In a process that catches stop
    signals for all its jobs (``signals.catch_stop_signals``: a sweep), the flag starts set when a signal came
    before the loop, and a signal to the loop is recorded for the process too (no further job starts).

    ``flag["hand_over"]()``, called once the stop checkpoint is written, restores the previous handlers and
    passes the signal on to the previous handler when that was a Python one: inside a submitit job (sweeps on
    SLURM) that is submitit's SIGUSR2 handler, which requeues the job and exits the process; the requeued job
    resumes from the checkpoint just written."""
    flag = {"signal": received(), "sigint": False}

    def handler(signum, frame):
        if signum == signal.SIGINT and flag["sigint"]:
            raise KeyboardInterrupt
        flag["sigint"] = flag["sigint"] or signum == signal.SIGINT
        flag["signal"] = signum
        note(signum)

    old = {}
    for sig in STOP_SIGNALS:
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass

    def restore():
        for sig, h in old.items():
            signal.signal(sig, h)

    def hand_over():
        signum = flag["signal"]
        restore()
        previous = old.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, None)

    flag["hand_over"] = hand_over
    try:
        yield flag
    finally:
        restore()


class Progress:
    """A tqdm bar on a TTY (``auto``/``bar``), one log line per eval (``log``), or nothing (``none``)."""

    def __init__(self, mode: str, steps: int, start: int):
        self.mode = ("bar" if sys.stderr.isatty() else "log") if mode == "auto" else mode
        self.steps, self.bar = steps, None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=start, dynamic_ncols=True, desc="train")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, step: int, rows: list[dict]) -> None:
        if not rows:
            return
        if self.mode == "log" and len(rows) == 1:
            r = rows[0]
            log.info("step %d/%d  train_loss %.4f  val_loss %.4f  train_acc %.3f  val_acc %.3f",
                     step, self.steps, r["train_loss"], r["val_loss"], r["train_acc"], r["val_acc"])
        elif self.mode == "log":
            accs = [r["val_acc"] for r in rows]
            log.info("step %d/%d  %d seeds: val_acc mean %.3f (min %.3f, max %.3f)", step, self.steps, len(rows),
                     sum(accs) / len(rows), min(accs), max(accs))
        elif self.bar is not None:
            r = rows[0]
            post = {"val_acc": f"{sum(x['val_acc'] for x in rows) / len(rows):.3f}"}
            if len(rows) == 1:
                post = {"val_loss": f"{r['val_loss']:.3f}", **post}
            self.bar.set_postfix(**post)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def restore(replicas, state: LoopState, ckpts: list[dict | None]) -> None:
    """Load the replicas and the loop state from their checkpoints (all at one step), if there are any."""
    if ckpts[0] is None:
        return
    replicas.load_state([{k: c[k] for k in ("model", "optimizer", "scheduler", "objective")} for c in ckpts])
    set_rng_state(ckpts[0]["rng"], {})
    state.step, state.clock = ckpts[0]["step"], dict(ckpts[0]["clock"])
    state.run_ids = [c.get("run_id", rid) for c, rid in zip(ckpts, state.run_ids, strict=True)]
    state.last_rows = [c.get("last_row", {}) for c in ckpts]


def train_loop(replicas, dirs: list, trackers: list, cadence: Cadence, state: LoopState,
               stoppers: list | None = None) -> list[dict]:
    """Train ``replicas`` from ``state.step`` to ``cadence.steps``, writing each replica's metrics, timing and
    checkpoints into its run directory (``dirs[k]``, a RunDir) and its tracker; returns the last rows.
    ``stoppers[k]`` (a StopTracker or None) may end replica k early: it is then checkpointed and marked DONE
    with its outcome at that step, and the loop ends when every replica has stopped."""
    K = len(dirs)
    stoppers = stoppers or [None] * K
    state.stopped = state.stopped or [None] * K

    def active(k: int) -> bool:
        return state.stopped[k] is None

    def do_eval(step: int) -> list[int]:
        t0 = time.perf_counter()
        rows = replicas.eval_rows(step)
        state.clock["eval"] += time.perf_counter() - t0
        newly_stopped = []
        for k, row in enumerate(rows):
            if not active(k):
                continue
            if bad := [row[key] for key in ("train_loss", "val_loss") if not math.isfinite(row.get(key, 0.0))]:
                fail(k, step, failure(step, _kind(bad[0])))
                continue
            dirs[k].metrics.append(row)
            timing = {"step": step, "train_seconds": state.clock["train"], "eval_seconds": state.clock["eval"]}
            dirs[k].timing.append(timing if K == 1 else {**timing, "parallel_seeds": K})
            trackers[k].log(row, step)
            state.last_rows[k] = row
            if stoppers[k] is not None and (outcome := stoppers[k].update(row)):
                newly_stopped.append(k)
                state.stopped[k] = outcome
        progress.show(step, [r for k, r in enumerate(rows) if active(k) or k in newly_stopped])
        return newly_stopped

    def do_checkpoint(step: int, which: list[int]) -> None:
        if not which:
            return
        rng = rng_state({})
        for k, payload in enumerate(replicas.state()):
            if k in which:
                dirs[k].save_checkpoint({"step": step, **payload, "rng": rng, "clock": state.clock,
                                         "run_id": state.run_ids[k], "last_row": state.last_rows[k],
                                         "threads": torch.get_num_threads()})

    def fail(k: int, step: int, outcome: RunOutcome) -> None:
        state.stopped[k] = outcome
        dirs[k].mark_done(outcome.step, outcome)
        log.info("%s: %s; stopped at step %d", dirs[k].path, outcome.text, step)

    def fail_non_finite(step: int) -> None:
        for k in range(K):
            if active(k) and (outcome := non_finite.read(k)) is not None:
                fail(k, step, outcome)

    def finish_stopped(step: int, which: list[int]) -> None:
        do_checkpoint(step, which)
        for k in which:
            dirs[k].mark_done(step, state.stopped[k])
            log.info("%s: %s at step %d", dirs[k].path, state.stopped[k].text, step)

    progress = Progress(cadence.progress, cadence.steps, state.step)
    non_finite = NonFiniteLoss()
    try:
        with stop_on_signals() as stop:
            if state.step == 0:
                finish_stopped(0, do_eval(0))
            while state.step < cadence.steps and any(map(active, range(K))):
                t0 = time.perf_counter()
                non_finite.update(replicas.train_step(state.step), state.step)
                state.step += 1
                state.clock["train"] += time.perf_counter() - t0
                progress.advance()
                step, stopped_now = state.step, []
                at_eval = step % cadence.eval_every == 0 or step == cadence.steps
                if at_eval or step % cadence.checkpoint_every == 0 or stop["signal"] is not None:
                    fail_non_finite(step)
                if at_eval:
                    stopped_now = do_eval(step)
                finish_stopped(step, stopped_now)
                running = [k for k in range(K) if active(k)]
                if step % cadence.checkpoint_every == 0 or step == cadence.steps:
                    do_checkpoint(step, running)
                if stop["signal"] is not None and step < cadence.steps and running:
                    do_checkpoint(step, running)
                    log.info("signal %d: checkpoint written at step %d", stop["signal"], step)
                    stop["hand_over"]()  # e.g. submitit's SIGUSR2 handler: requeue the job (it exits)
                    raise Interrupted(stop["signal"], step)
    finally:
        progress.close()
    return state.last_rows
