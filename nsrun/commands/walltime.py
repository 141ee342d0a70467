"""The cost map: what a regularised step costs and where fewer steps become fewer seconds (docs/walltime.md).

    python -m nsrun.commands.walltime run [--map NAME,...] [--only ARM,...] [overrides]   # the arms, then the report
    python -m nsrun.commands.walltime report --out results/DATE-walltime                  # the report, no training

The maps are ``conf/experiment/walltime_*.yaml`` (run as the map command runs its arms: one Hydra sweep per arm,
rerunning skips finished runs); the report prices every cell's step side by side in this process and writes
summary.md, cost_map.csv and one figure per map (:mod:`nsrun.analysis.walltime`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from nsrun.analysis.maps import N_BOOT, load_map_runs
from nsrun.commands.map import git_state, load_specs, run_maps, side_by_side_cell_seconds

PROG = "nsrun-walltime"
MAPS = ("walltime_modadd_quick", "walltime_modadd_quick_confirm", "walltime_modadd_second")


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="Run the cost map (conf/experiment/walltime_*.yaml) and "
                                "write its report: steps to the onset against a step's cost, in seconds.")
    sub = p.add_subparsers(dest="command", required=True)
    for command in ("run", "report"):
        s = sub.add_parser(command, help="run the arms, then the report" if command == "run"
                           else "the report from existing run dirs (no training)")
        s.add_argument("--map", default="", help=f"comma-separated maps (default: {','.join(MAPS)})")
        s.add_argument("--root", type=Path, default=None, help="sweep dirs under ROOT/NAME (default: each map's "
                       "experiment.map.root, runs/walltime/...)")
        s.add_argument("--out", type=Path, default=Path("results/walltime"), help="where the report goes")
        s.add_argument("--n-boot", type=int, default=N_BOOT)
        if command == "run":
            s.add_argument("--launcher", default="local_cores", help="hydra/launcher option ('' = Hydra's basic)")
            s.add_argument("--only", default="", help="comma-separated arm names (default: every arm)")
            s.add_argument("overrides", nargs="*", help="extra nsrun overrides for every sweep (e.g. logger=none)")
    args = p.parse_args(argv)
    load_specs(p, args, [x.strip() for x in args.map.split(",") if x.strip()] or list(MAPS))
    return args


def main(argv=None) -> None:
    from nsrun.analysis.walltime import write_walltime_report

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    start, code = time.time(), 0
    if args.command == "run":
        code = 1 if run_maps(args.specs, args.only, args.launcher or None, args.overrides, args.n_boot,
                             args.root) else 0
    maps = [load_map_runs(spec, args.n_boot, price_cells=lambda cells, spec=spec: side_by_side_cell_seconds(
        spec, cells)) for spec in args.specs.values()]
    command = shlex.join(["python", "-m", "nsrun.commands.walltime", *argv])
    header = {"commit": git_state(), "report written by": f"`{command}`"}
    summary = write_walltime_report(maps, args.out, header)
    print(f"{PROG}: wrote {summary}, cost_map.csv and the figures in {args.out}")
    print(f"{PROG}: {args.command} done in {time.time() - start:.0f} s (exit {code})")
    sys.exit(code)


if __name__ == "__main__":
    main()
