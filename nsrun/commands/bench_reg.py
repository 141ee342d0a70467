"""``make bench``, section ``reuse``: the regulariser's step price with and without its exact saving.

For each task and rho in :data:`RHOS`, regularised / baseline seconds per step, every noisy row run as before
(``reuse_equal_rows=False``, the cost of two full passes) and only the noisy rows whose input is no clean row of
the batch (the default), all variants interleaved in one process. The note gives the fraction of noisy rows that
ran, counted over :data:`COUNTED_STEPS` further steps.
"""

from __future__ import annotations

RHOS = (0.25, 0.5, 0.9)
TARGET = ("modadd", 0.9, 1.4)  # task, rho, the largest regularised / baseline ratio wanted with the saving
COUNTED_STEPS = 3


def noisy_rows_run(run) -> float:
    """The fraction of noisy rows that ``run``'s next steps put through the model (full batch noised)."""
    rows = []
    handle = run.model.register_forward_pre_hook(lambda m, args, kwargs: rows.append(len(args[0])), with_kwargs=True)
    try:
        for _ in range(COUNTED_STEPS):
            run.step()
    finally:
        handle.remove()
    n = run.examples_per_step()
    return (sum(rows) - n * COUNTED_STEPS) / (n * COUNTED_STEPS)


def bench_reuse(report, tasks: dict, device, repeats: int, n_steps: int, run_cls, interleaved, steps_fn) -> None:
    for task, overrides in tasks.items():
        runners = {"base": run_cls([*overrides, "reg=none"], device)}
        for rho in RHOS:
            for reuse in (False, True):
                run = run_cls([*overrides, "reg=stability", f"reg.rho={rho}"], device)
                run.replicas.objective.reuse_equal_rows = reuse
                runners[(rho, reuse)] = run
        t = interleaved({name: steps_fn(r, n_steps) for name, r in runners.items()}, device, repeats)
        base = t["base"]
        report.add("reuse", f"{task}: s/step baseline", base / n_steps, "s")
        for rho in RHOS:
            before, after = t[(rho, False)] / base, t[(rho, True)] / base
            target, met = "", None
            if (task, rho) == TARGET[:2]:
                target, met = f"<= {TARGET[2]}", after <= TARGET[2]
            report.add("reuse", f"{task}: rho {rho} regularised / baseline, before", before, "x",
                       note="every noisy row runs")
            report.add("reuse", f"{task}: rho {rho} regularised / baseline, after", after, "x", target, met,
                       note=f"{noisy_rows_run(runners[(rho, True)]):.0%} of noisy rows run")
