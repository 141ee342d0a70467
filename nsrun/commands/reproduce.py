"""Reproduce the paper's experiments: run the sweeps of ``conf/experiment/``, then the figures and the results table.

    python -m nsrun.commands.reproduce run --quick   # quick sweeps (local, one job per core), then figures
    python -m nsrun.commands.reproduce run --launcher submitit_slurm  # the full sweeps on SLURM, then figures
    python -m nsrun.commands.reproduce figures --quick --out DIR  # figures + summary from run dirs, no training

Each experiment is one Hydra sweep (one per entry of its ``experiment.sweeps``, for arms that no single grid
holds) with a fixed sweep directory (its config's ``hydra.sweep.dir``, e.g.
``runs/reproduce-quick/modadd/reg=...,seed=...``), so rerunning the same command skips the runs that finished
(``DONE``) and resumes the unfinished ones. What each experiment is and how it is read (onset metric and
level, groups, the paper's numbers) is its config's ``experiment:`` key; the figures, claims and summary
are :func:`nsrun.analysis.reproduction.reproduce_figures`. Claim 1 on modular addition also states the best cell
of each sign of the map (``python -m nsrun.commands.map``; docs/map.md), read from its run dirs
(``--map-root``, default its config's ``experiment.map.root``), or says in one line that the map has not run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from nsrun.analysis.experiments import Experiment, load_experiments

PROG = "nsrun-reproduce"
MAPS = {"modadd": "map_modadd_quick"}  # experiment -> the map (conf/experiment/) whose best cells its claim 1 states


def prepare_text_subset(dst: Path, train_lines: int, val_lines: int, src: Path | None = None) -> Path:
    """The quick WikiText-2 data in ``dst``: the first ``train_lines`` lines of valid.txt (training) and the
    first ``val_lines`` of test.txt (evaluation), so that each evaluation of the whole splits stays cheap."""
    from nsrun.science.influence.text import default_data_dir

    src = src or default_data_dir()
    if src is None or not (Path(src) / "valid.txt").exists():
        raise FileNotFoundError("no offline WikiText-2 (valid.txt, test.txt); set NSRUN_DATA_DIR")
    dst.mkdir(parents=True, exist_ok=True)
    for name, n in (("valid.txt", train_lines), ("test.txt", val_lines)):
        text = "".join((Path(src) / name).read_text().splitlines(keepends=True)[:n])
        if not (dst / name).exists() or (dst / name).read_text() != text:
            (dst / name).write_text(text)
    return dst


def sweep_commands(exp: Experiment, launcher: str | None, extra: list[str], root: Path | None,
                   text_lines: tuple[int, int] | None) -> list[list[str]]:
    """``nsrun -m +experiment=CONFIG ...`` for one experiment, one per entry of its ``sweeps`` (one without);
    its text subset is written first, if it has one."""
    nsrun = shutil.which("nsrun")
    cmd = [nsrun] if nsrun else [sys.executable, "-c", "from nsrun.commands.nsrun import main; main()"]
    cmd += ["-m", f"+experiment={exp.config}"]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
    if root is not None:
        cmd.append(f"hydra.sweep.dir={root / exp.name}")
    if exp.text_subset:
        lines = text_lines or (exp.text_subset["train_lines"], exp.text_subset["val_lines"])
        data = prepare_text_subset((root or exp.sweep_dir.parent) / "data" / "wikitext-2", *lines)
        cmd.append(f"task.data_dir={data}")
    return [cmd + sweep.split() + list(extra) for sweep in exp.sweeps or ("",)]


def run_sweeps(experiments: dict[str, Experiment], launcher: str | None, extra: list[str], root: Path | None = None,
               text_lines: tuple[int, int] | None = None) -> int:
    """Run each experiment's sweeps (finished runs are skipped, others resume); with ``root`` the sweeps go to
    ``root/NAME`` instead of the configs' own sweep dirs; ``text_lines``: lines of the WikiText-2 training
    and evaluation files instead of the experiment's. Returns the number of failed sweeps."""
    failed = 0
    for name, exp in experiments.items():
        for cmd in sweep_commands(exp, launcher, extra, root, text_lines):
            print(f"{PROG}: {' '.join(cmd)}", flush=True)
            start = time.time()
            code = subprocess.call(cmd)
            print(f"{PROG}: {name} exit {code} after {time.time() - start:.0f} s", flush=True)
            failed += code != 0
    return failed


def parse_args(argv, conf_dir: Path | None = None):
    """The command line, with ``args.experiments``: the selected experiments at the chosen setting."""
    p = argparse.ArgumentParser(prog=PROG, description="Run the paper's experiments and regenerate its figures "
                                "and headline numbers (results/summary.md).")
    sub = p.add_subparsers(dest="command", required=True)
    for command in ("run", "figures"):
        s = sub.add_parser(command, help="run the sweeps, then the figures" if command == "run"
                           else "figures and summary from existing run dirs (no training)")
        s.add_argument("--quick", action="store_true", help="the reduced settings (conf/experiment/*_quick.yaml)")
        s.add_argument("--only", default="", help="comma-separated experiments (default: all of conf/experiment)")
        s.add_argument("--out", type=Path, default=None,
                       help="where figures and summary.md go (default: results/reproduce[-quick])")
        s.add_argument("--root", type=Path, default=None,
                       help="sweep dirs (default: each experiment's hydra.sweep.dir, runs/reproduce[-quick]/NAME)")
        s.add_argument("--no-theory", action="store_true", help="leave out figure 5")
        s.add_argument("--no-influence", action="store_true", help="leave out figure 6")
        s.add_argument("--n-boot", type=int, default=10_000)
        s.add_argument("--map-root", type=Path, default=None,
                       help=f"the run dirs of the map ({MAPS['modadd']}: ROOT/SWEEP/OVERRIDES) whose best cell of "
                       "each sign claim 1 on modadd states (default: its experiment.map.root, runs/map/modadd_quick)")
        if command == "run":
            s.add_argument("--launcher", default="local_cores",
                           help="hydra/launcher option (local_cores, submitit_slurm, slurm_cpu, ...; '' = basic)")
            s.add_argument("overrides", nargs="*", help="extra nsrun overrides for every sweep")
    args = p.parse_args(argv)
    experiments = load_experiments(conf_dir, args.quick)
    only = [x.strip() for x in args.only.split(",") if x.strip()] or list(experiments)
    unknown = [x for x in only if x not in experiments]
    if unknown:
        p.error(f"--only: unknown experiment(s) {', '.join(unknown)}; known: {', '.join(experiments)}")
    args.experiments = {name: exp for name, exp in experiments.items() if name in only}  # in figure order
    args.maps = claim_maps(p, args, conf_dir)
    if args.out is None:
        args.out = Path("results/reproduce-quick" if args.quick else "results/reproduce")
    return args


def claim_maps(p: argparse.ArgumentParser, args, conf_dir: Path | None) -> dict:
    """Experiment -> the map (:data:`MAPS`) of each selected experiment that has one, at ``--map-root`` if given;
    a ``--map-root`` that is not a directory, or that no selected experiment reads, is refused."""
    from nsrun.analysis.maps import load_map

    names = {name: stem for name, stem in MAPS.items() if name in args.experiments}
    if args.map_root is not None and not args.map_root.is_dir():
        p.error(f"--map-root: {args.map_root} is not a directory (the map's run dirs: ROOT/SWEEP/OVERRIDES)")
    if args.map_root is not None and not names:
        p.error(f"--map-root: only {', '.join(MAPS)} reads a map, and --only leaves it out")
    try:
        specs = {name: load_map(stem, conf_dir) for name, stem in names.items()}
    except ValueError as e:
        p.error(str(e))
    return {name: replace(spec, root=args.map_root or spec.root) for name, spec in specs.items()}


def print_figures(result) -> None:
    from rich.console import Console

    for note in result.notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    console = Console(width=None if sys.stdout.isatty() else 200)
    from nsrun.analysis.report import summary_tables

    for table in summary_tables(result.rows, result.claims):
        console.print(table)
    out = result.summary.parent
    print(f"wrote {result.summary}, {out / 'summary.csv'}, {out / 'claims.csv'} and {len(result.figures)} figure "
          f"files in {out}")


def main(argv=None) -> None:
    from nsrun.analysis import theory
    from nsrun.analysis.reproduction import reproduce_figures

    args = parse_args(sys.argv[1:] if argv is None else argv)
    selected = args.experiments
    start = time.time()
    code = 0
    if args.command == "run":
        code = 1 if run_sweeps(selected, args.launcher or None, args.overrides, args.root) else 0
    result = reproduce_figures(selected, args.out, None, args.root,
                               None if args.no_theory else theory.LEVELS["quick" if args.quick else "full"],
                               None if args.no_influence else Path("results/influence"), args.n_boot, args.maps)
    print_figures(result)
    code = max(code, 0 if result.n_experiments else 2)
    print(f"{PROG}: {args.command} done in {time.time() - start:.0f} s (exit {code})")
    sys.exit(code)


if __name__ == "__main__":
    main()
