"""``make bench``, section ``reuse``: the regulariser's step price with and without its exact saving.

For each task and rho in :data:`RHOS`, regularised / baseline seconds per step, the noisy rows run as before
(every noisy row: ``reuse_unchanged=False``, the two-pass cost) and with the noisy rows equal to their clean rows
left out (the default), all variants interleaved in one process. The note gives the expected fraction of noisy
rows that run: ``1 - q^P`` with ``q = (1 + rho)/2 + (1 - rho)/(2K)`` the chance that a resampleable position is
unchanged (K noise tokens) and P resampleable positions.
"""

from __future__ import annotations

RHOS = (0.25, 0.5, 0.9)
TARGET = ("modadd", 0.9, 1.4)  # task, rho, the largest regularised / baseline ratio wanted with the saving


def changed_fraction(task, rho: float) -> float:
    """The expected fraction of noisy rows that differ from their clean rows (token noise at ``rho``)."""
    k = len(task.noise_tokens)
    unchanged = (1 + rho) / 2 + (1 - rho) / (2 * k)
    return 1 - unchanged ** int(task.resample_mask.sum())


def bench_reuse(report, tasks: dict, device, repeats: int, n_steps: int, run_cls, interleaved, steps_fn) -> None:
    for task, overrides in tasks.items():
        runners = {"base": run_cls([*overrides, "reg=none"], device)}
        for rho in RHOS:
            for reuse in (False, True):
                run = run_cls([*overrides, "reg=stability", f"reg.rho={rho}"], device)
                run.replicas.objective.reuse_unchanged = reuse
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
                       note=f"{changed_fraction(runners['base'].task, rho):.0%} of noisy rows run")
