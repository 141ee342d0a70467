"""The map of where noise-stability regularisation helps on modular addition (docs/map.md).

    python -m nsrun.commands.map run [--launcher local_cores] [--only ARM,...] [--map NAME,...] [overrides]
    python -m nsrun.commands.map report --out results/DATE-map      # the report from the run dirs, no training
    python -m nsrun.commands.map run --tiny --root /tmp/map --out /tmp/map/report   # a 2 x 2 grid in a minute

Each map is a ``conf/experiment/map_*.yaml`` whose ``experiment.map.arms`` are run in order, one Hydra sweep
each (``nsrun -m +experiment=MAP ...``, the reproduction's sweep runner) into ``ROOT/SWEEP/<overrides>``:
rerunning skips finished runs and resumes the others, also when an arm's list of jobs grows. The arms at the
best cell read the grid's finished runs to choose it (the second regime reads the first map's); the Optuna
confirmation reads the search's result. Every sweep is logged in ``ROOT/sweeps.jsonl`` (command, wall time,
exit code, commit). ``run`` ends with the report, as ``report`` writes it (:mod:`nsrun.analysis.map_report`).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from nsrun.analysis.maps import (
    N_BOOT,
    Arm,
    MapSpec,
    append_sweep_log,
    best_cell,
    best_values,
    cell_overrides,
    grid_cell,
    load_map,
    load_map_runs,
    optuna_result,
    read_sweep_log,
)

PROG = "nsrun-map"
MAPS = ("map_modadd_quick", "map_modadd_second")
TINY = ("map_modadd_tiny",)


def git_state() -> str:
    """``COMMIT`` of the working tree, ``+ N uncommitted files`` when it differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (f" + {len(dirty)} uncommitted files" if dirty else "")


def arm_cell(arm: Arm, spec: MapSpec, specs: dict[str, MapSpec], n_boot: int,
             root: Path | None = None) -> tuple[dict | None, str]:
    """The values ``arm`` runs at (key -> value or list) and what they are, or None and why it cannot run yet;
    a map that ``specs`` lacks (the first map of a second regime's best cell) is read from ``root``."""
    if arm.cell is None:
        return {}, ""
    if arm.cell == "grid":
        return grid_cell(spec.grid), ""
    if arm.cell == "paper":
        return dict(spec.paper_cell), ""
    if arm.cell == "best":
        source = specs.get(arm.best_from or spec.name) or load_map(arm.best_from, root=root)
        cell = best_cell(load_map_runs(source, n_boot))
        if cell is None:
            return None, f"no best cell yet: no cell of {source.name}'s grid reaches the onset in most seeds"
        return best_values(cell, source), f"best cell of {source.name}: {cell.label}"
    result = optuna_result(spec.optuna_dir)
    if result is None or not result["best_params"]:
        return None, f"no Optuna result in {spec.optuna_dir} (run nsrun -m hparams_search=modadd_optuna first)"
    return {**result["best_params"], "seed": list(spec.confirm_seeds)}, f"Optuna's best point in {spec.optuna_dir}"


def run_arm(spec: MapSpec, arm: Arm, cell: dict, note: str, launcher: str | None, extra: list[str]) -> int:
    """One arm's sweep through the reproduction's sweep runner, logged in ``ROOT/sweeps.jsonl``; its exit code."""
    from nsrun.commands.reproduce import run_sweeps, sweep_commands

    job = SimpleNamespace(config=spec.config, name=f"{spec.name}/{arm.name}", text_subset=None, sweeps=())
    overrides = [*cell_overrides(arm, cell, spec.reg_overrides), f"hydra.sweep.dir={spec.root / arm.sweep}", *extra]
    start = time.time()
    failed = run_sweeps({job.name: job}, launcher, overrides)
    append_sweep_log(spec.root, {"map": spec.name, "arm": arm.name, "sweep": arm.sweep, "at": note, "start": start,
                                 "seconds": round(time.time() - start, 1), "exit": int(failed > 0),
                                 "command": shlex.join(sweep_commands(job, launcher, overrides, None, None)[0]),
                                 "commit": git_state()})
    return int(failed > 0)


def run_maps(specs: dict[str, MapSpec], only: list[str], launcher: str | None, extra: list[str], n_boot: int,
             root: Path | None = None) -> int:
    """Every selected arm of every map, in order; the number of failed sweeps."""
    failed = 0
    for spec in specs.values():
        for arm in spec.arms:
            if only and arm.name not in only:
                continue
            cell, why = arm_cell(arm, spec, specs, n_boot, root)
            if cell is None:
                print(f"{PROG}: {spec.name}/{arm.name} skipped: {why}", flush=True)
                continue
            if why:
                print(f"{PROG}: {spec.name}/{arm.name} at the {why}", flush=True)
            failed += run_arm(spec, arm, cell, why, launcher, extra)
    return failed


PRICE_DROPPED = ("seed", "logger", "train.threads", "train.progress", "train.device")  # not the step's price


def cell_overrides_of(run_path: Path) -> list[str]:
    """The overrides a cell's run was trained with (its ``.hydra/overrides.yaml``), less the seed and the keys
    that do not change what a step computes."""
    import yaml

    items = yaml.safe_load((run_path / ".hydra" / "overrides.yaml").read_text()) or []
    return [o for o in items if not o.startswith("hydra") and o.split("=", 1)[0].lstrip("+~") not in PRICE_DROPPED]


def side_by_side_cell_seconds(spec: MapSpec, cells: list, repeats: int = 15, n_steps: int = 12) -> dict:
    """Seconds per training step of each of ``cells`` (label -> seconds), its config as its first run trained it,
    all timed interleaved in this process on one CPU thread (``make bench``'s method): the price of a step free of
    the load the runs met. ``n_steps`` is a multiple of every ``reg.every_k_steps`` the maps use (1, 2, 4)."""
    import torch

    from nsrun.commands.bench import interleaved, steps_fn
    from nsrun.commands.bench_runs import Run

    threads, cpu = torch.get_num_threads(), torch.device("cpu")
    torch.set_num_threads(1)
    try:
        runs = {c.label: Run([f"+experiment={spec.config}", *cell_overrides_of(c.runs[0].path)], cpu)
                for c in cells if c.runs}
        t = interleaved({label: steps_fn(r, n_steps) for label, r in runs.items()}, cpu, repeats)
    finally:
        torch.set_num_threads(threads)
    return {label: seconds / n_steps for label, seconds in t.items()}


def load_specs(p: argparse.ArgumentParser, args, names: list[str]) -> None:
    """``args.specs`` (the maps ``names``, under ``args.root``) and ``args.only`` (the arm names of ``--only``),
    or a one-line argparse error naming the bad option."""
    try:
        args.specs = {spec.name: spec for spec in (load_map(n, root=args.root) for n in names)}
    except ValueError as e:
        p.error(f"--map: {e}")
    except Exception as e:  # Hydra's: no such config
        p.error(f"--map: cannot load {', '.join(names)} from conf/experiment ({type(e).__name__}: "
                f"{str(e).splitlines()[0]})")
    args.only = [x.strip() for x in getattr(args, "only", "").split(",") if x.strip()]
    known = {a.name for spec in args.specs.values() for a in spec.arms}
    if unknown := [x for x in args.only if x not in known]:
        p.error(f"--only: unknown arm(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="Run the map of where noise-stability regularisation helps "
                                "on modular addition (conf/experiment/map_*.yaml) and write its report.")
    sub = p.add_subparsers(dest="command", required=True)
    for command in ("run", "report"):
        s = sub.add_parser(command, help="run the arms, then the report" if command == "run"
                           else "the report from existing run dirs (no training)")
        s.add_argument("--map", default="", help=f"comma-separated map configs (default: {','.join(MAPS)})")
        s.add_argument("--tiny", action="store_true", help=f"the tiny map for a first look and the tests ({TINY[0]})")
        s.add_argument("--root", type=Path, default=None, help="sweep dirs under ROOT/NAME (default: each map's "
                       "experiment.map.root, runs/map/...)")
        s.add_argument("--out", type=Path, default=Path("results/map"), help="where summary.md and figures go")
        s.add_argument("--n-boot", type=int, default=N_BOOT)
        s.add_argument("--seconds", choices=("side-by-side", "logged"), default="side-by-side",
                       help="training seconds to the onset: onset step x the seconds per step of each cell's "
                       "config timed side by side in this process (default), or as each run logged them "
                       "(which carries the machine's load at the time)")
        if command == "run":
            s.add_argument("--launcher", default="local_cores",
                           help="hydra/launcher option (local_cores, submitit_slurm, ...; '' = Hydra's basic)")
            s.add_argument("--only", default="", help="comma-separated arm names (default: every arm)")
            s.add_argument("overrides", nargs="*", help="extra nsrun overrides for every sweep (e.g. train.threads=1)")
    args = p.parse_args(argv)
    names = [x.strip() for x in args.map.split(",") if x.strip()] or list(TINY if args.tiny else MAPS)
    load_specs(p, args, names)
    return args


def main(argv=None) -> None:
    from nsrun.analysis.map_report import write_map_report

    args = parse_args(sys.argv[1:] if argv is None else argv)
    start, code = time.time(), 0
    command = shlex.join(["python", "-m", "nsrun.commands.map", *(sys.argv[1:] if argv is None else argv)])
    if args.command == "run":
        failed = run_maps(args.specs, args.only, args.launcher or None, args.overrides, args.n_boot, args.root)
        code = 1 if failed else 0
    maps = [load_map_runs(spec, args.n_boot, price_cells=(lambda cells, spec=spec: side_by_side_cell_seconds(
        spec, cells)) if args.seconds == "side-by-side" else None) for spec in args.specs.values()]
    sweeps = list(dict.fromkeys(row["command"] for spec in args.specs.values() for row in read_sweep_log(spec.root)))
    summary = write_map_report(maps, args.out, {"commit": git_state(), "report written by": f"`{command}`"}, sweeps)
    print(f"{PROG}: wrote {summary} and its figures, cells.csv, runs.csv in {args.out}")
    print(f"{PROG}: {args.command} done in {time.time() - start:.0f} s (exit {code})")
    sys.exit(code)


if __name__ == "__main__":
    main()
