"""``make bench`` sections on speed per step, the shared machine and start-up.

* ``fast``: seconds per training step of the plain model against ``fast_paths`` (nsrun/science/model.py) at
  1 thread and at every available core, interleaved; examples/s; and the fraction of the machine's float32
  matmul peak, measured in the same run, that a step reaches, counting the FLOPs of the plain model (so a
  path that does less work shows as a higher *effective* fraction).
* ``shared``: one run alone against two at once, in separate processes started together (each waits for the
  other before timing), for torch's defaults, nsrun's default thread policy (nsrun/runner/threads.py) and one
  thread each.
* ``startup``: what a process pays before its first step: importing torch, the ``torch._dynamo`` import that
  constructing a ``torch.optim`` optimiser triggers, and a whole 1-step ``nsrun`` run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import torch

PEAK_SIZE = 1024  # square float32 matmul that measures the peak
FAST_TASKS = ("modadd", "parity", "wikitext2")
FAST_REGS = {"reg=none": ["reg=none"], "reg=stability": ["reg=stability"]}
SHARED_TASK = ["task=modadd", "reg=none"]  # the default Nanda setting (p = 113, full batch), no regulariser
NO_THREAD_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 "NSRUN_SET_THREAD_ENV")


def peak_gflops(repeats: int = 5) -> float:
    """GFLOP/s of a ``PEAK_SIZE``-square float32 matmul at torch's current thread count (best of ``repeats``)."""
    a, b = torch.randn(PEAK_SIZE, PEAK_SIZE), torch.randn(PEAK_SIZE, PEAK_SIZE)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * PEAK_SIZE**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_flops(run) -> float:
    """FLOPs of one training step (forward and backward matmuls and attention) as torch's FLOP counter counts
    them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run.step()
    return float(counter.get_total_flops())


def bench_fast(report, tasks: dict, device, repeats: int, n_steps: int, make_run, interleaved, steps_fn,
               judge: bool = True) -> None:
    """Plain against fast paths per task and regulariser, at 1 thread and at all available cores (``judge``: hold
    the default Nanda setting, modadd, to its goal)."""
    from nsrun.runner.threads import available_cores

    before = torch.get_num_threads()
    counts = sorted({1, available_cores()}) if device.type == "cpu" else [before]
    try:
        for task, overrides in tasks.items():
            for reg, reg_overrides in FAST_REGS.items():
                plain = make_run([*overrides, *reg_overrides], device, fast_paths=False)
                fast = make_run([*overrides, *reg_overrides], device, fast_paths=True)
                flops = step_flops(plain)
                examples = plain.examples_per_step()
                name = f"{task} {reg}"
                for threads in counts:
                    torch.set_num_threads(threads)
                    peak = peak_gflops() if device.type == "cpu" else None
                    t = interleaved({"plain": steps_fn(plain, n_steps), "fast": steps_fn(fast, n_steps)}, device,
                                    repeats)
                    s_plain, s_fast = t["plain"] / n_steps, t["fast"] / n_steps
                    speedup = s_plain / s_fast
                    goal = judge and task == "modadd" and device.type == "cpu"
                    report.add("fast", f"{name}, {threads} thr: examples/s plain", examples / s_plain, "ex/s")
                    report.add("fast", f"{name}, {threads} thr: examples/s fast paths", examples / s_fast, "ex/s")
                    report.add("fast", f"{name}, {threads} thr: fast / plain examples/s", speedup, "x",
                               ">= 1.5" if goal else "", speedup >= 1.5 if goal else None)
                    if peak is not None:
                        note = f"plain step {flops / 1e9:.2f} GFLOP; peak {peak:.0f} GFLOP/s"
                        report.add("fast", f"{name}, {threads} thr: plain, fraction of peak",
                                   flops / s_plain / 1e9 / peak, "", note=note)
                        report.add("fast", f"{name}, {threads} thr: fast, effective fraction of peak",
                                   flops / s_fast / 1e9 / peak, "", note="counting the plain step's FLOPs")
    finally:
        torch.set_num_threads(before)


# -- two runs at once --------------------------------------------------------------------------------------

def shared_variants() -> dict[str, tuple[dict, object]]:
    """name -> (environment, train.threads) of the processes: torch's defaults, nsrun's default policy (what the
    nsrun entry point sets, then ``train.threads=auto``) and one thread each."""
    from nsrun.runner.threads import wait_policy_env

    clean = {k: v for k, v in os.environ.items() if k not in NO_THREAD_ENV}
    nsrun_env = {**clean, **wait_policy_env(clean), "NSRUN_SET_THREAD_ENV": "OMP_WAIT_POLICY"}
    return {"torch default": (clean, None), "nsrun default": (nsrun_env, "auto"), "1 thread each": (clean, 1)}


def step_worker(spec: str) -> None:
    """A process that trains ``SHARED_TASK``: builds the run, prints ``ready``, waits for a line on stdin, then
    times ``steps`` steps and prints ``{"s_per_step", "threads"}`` as JSON."""
    from nsrun.commands.bench_runs import Run
    from nsrun.runner.threads import apply_thread_policy

    args = json.loads(spec)
    used = apply_thread_policy(args["threads"], "cpu")
    run = Run(SHARED_TASK, torch.device("cpu"))
    run.step()
    print("ready", flush=True)
    sys.stdin.readline()
    times = [_timed(run.step) for _ in range(args["steps"])]
    print(json.dumps({"s_per_step": statistics.median(times), "threads": used["threads"]}), flush=True)


def _workers(n: int, env: dict, threads, steps: int) -> list[dict]:
    """Start ``n`` step workers, let them time their steps together, return their results."""
    cmd = [sys.executable, "-m", "nsrun.commands.bench", "--step-worker",
           json.dumps({"threads": threads, "steps": steps})]
    procs = [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"step worker failed: {p.communicate()[0][-2000:]}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def bench_shared(report, repeats: int, steps: int) -> None:
    """One run alone and two at once for each thread policy; the pair's ratio to the lone run."""
    lone: dict[str, list[float]] = {}
    pair: dict[str, list[float]] = {}
    threads: dict[str, int] = {}
    variants = shared_variants()
    for _ in range(repeats):
        for name, (env, train_threads) in variants.items():
            (alone,) = _workers(1, env, train_threads, steps)
            both = _workers(2, env, train_threads, steps)
            lone.setdefault(name, []).append(alone["s_per_step"])
            pair.setdefault(name, []).extend(r["s_per_step"] for r in both)
            threads[name] = alone["threads"]
    for name in variants:
        one, two = statistics.median(lone[name]), statistics.median(pair[name])
        goal = name == "nsrun default"
        report.add("shared", f"{name} ({threads[name]} thr): s/step alone", one, "s")
        report.add("shared", f"{name} ({threads[name]} thr): s/step, two at once", two, "s",
                   note=f"range {min(pair[name]):.3g}-{max(pair[name]):.3g} s")
        report.add("shared", f"{name}: two at once / alone", two / one, "x", "<= 2.2" if goal else "",
                   two / one <= 2.2 if goal else None)
    cost = statistics.median(lone["nsrun default"]) / statistics.median(lone["torch default"])
    report.add("shared", "nsrun default / torch default, alone", cost, "x",
               note="what the passive wait policy costs a lone run")


# -- start-up ----------------------------------------------------------------------------------------------

IMPORTS = {
    "import torch": "import torch",
    "import torch + construct an optimiser": "import torch; torch.optim.AdamW([torch.zeros(1, requires_grad=True)])",
    "import torch + optimiser + deterministic mode": (
        "import torch; torch.optim.AdamW([torch.zeros(1, requires_grad=True)]); "
        "torch.use_deterministic_algorithms(True, warn_only=True)"),
}


def bench_imports(report, repeats: int) -> None:
    """Seconds of fresh interpreters that import torch, then construct an optimiser (which imports
    ``torch._dynamo``), then turn on deterministic mode."""
    env = {k: v for k, v in os.environ.items() if k not in NO_THREAD_ENV}
    times = {name: [] for name in IMPORTS}
    for _ in range(repeats):
        for name, code in IMPORTS.items():
            times[name].append(_timed(lambda c=code: subprocess.run([sys.executable, "-c", c], env=env, check=True)))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    names = list(IMPORTS)
    report.add("startup", names[0], med[names[0]], "s")
    report.add("startup", "torch.optim's torch._dynamo import", med[names[1]] - med[names[0]], "s",
               note="paid by every process that builds an optimiser (torch 2.13)")
    report.add("startup", "deterministic mode after that", med[names[2]] - med[names[1]], "s")
