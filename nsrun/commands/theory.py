"""``nsrun-theory``: theory vs Monte Carlo for a random-init model (from config overrides) or a trained run.

    nsrun-theory model=tiny task.p=23                 # random init, composed like nsrun
    nsrun-theory --run outputs/2026-11-24/21-31-03    # the run's config and newest checkpoint

Prints (rich) and writes under ``--out``: ``relu.csv`` (closed form vs Monte Carlo of E[ReLU(X)ReLU(Y)]),
``recurrence.csv`` (both forms of the layer recurrence beside a random ReLU network), ``attention.csv``
(identity-W and random-W predictions vs Monte Carlo) and ``intervals.csv`` (per stage of the model, the
predicted [lower, upper] interval on E[h(X) . h(Y)] / D beside the measurement), with ``theory.png`` and
``intervals.png`` (:mod:`nsrun.analysis.theory`). Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "nsrun-theory"


def fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    from nsrun.analysis.theory import TheorySettings

    d = TheorySettings()
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides for a random-init model (as for nsrun)")
    p.add_argument("--run", help="a run directory: use its resolved config and newest checkpoint")
    p.add_argument("--rhos", default=",".join(f"{r:g}" for r in d.rhos), help="comma-separated rho values in [0, 1]")
    p.add_argument("--noise", default=d.noise, help="token | gaussian (noise for the per-stage measurement)")
    p.add_argument("--split", default=d.split, help="train | val: inputs for the per-stage measurement")
    p.add_argument("--n-examples", type=int, default=d.n_examples)
    p.add_argument("--n-repeats", type=int, default=d.n_repeats)
    p.add_argument("--mc-samples", type=int, default=d.mc_samples, help="pairs for the ReLU Monte Carlo")
    p.add_argument("--depth", type=int, default=d.depth, help="layers of the ReLU recurrence table")
    p.add_argument("--route", default=d.route, help="data | gaussian: where s(rho) of each attention layer is "
                   "sampled (the layer's attention on the clean/noisy inputs, or Gaussian tokens)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the noise and the synthetic checks")
    p.add_argument("--out", help="output folder (default: RUN/theory with --run, else ./theory)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        if e.code:
            fail(f"could not parse the command line; see {PROG} --help")
        raise
    try:
        rhos = tuple(float(r) for r in args.rhos.split(",") if r.strip())
    except ValueError:
        fail(f"--rhos: must be comma-separated numbers in [0, 1], got {args.rhos!r}")
    try:
        args.settings = TheorySettings(rhos, args.noise, args.split, args.n_examples, args.n_repeats,
                                       args.mc_samples, args.depth, args.route, args.seed)
    except ValueError as e:
        fail(str(e))
    if args.run and args.overrides:
        fail("give either --run or config overrides, not both")
    return args


def compose_config(overrides: list[str]):
    from nsrun.analysis.experiments import compose
    from nsrun.commands.precheck import format_hydra_error
    from nsrun.runner.errors import UsageError

    try:
        return compose(None, overrides)
    except Exception as e:
        raise UsageError(format_hydra_error(e, None, overrides=overrides)) from None


def load_model(args):
    """(cfg, task, model, description) from a run directory or from composed overrides."""
    from nsrun.analysis import theory
    from nsrun.runner.rundir import RunDir

    if not args.run:
        return theory.random_model(compose_config(list(args.overrides)))
    run = RunDir(args.run)
    if run.status() == "in progress":
        print(f"{PROG}: warning: {run.path} is in progress ({'a writer holds it' if run.is_locked() else 'no DONE'});"
              " using its newest checkpoint", file=sys.stderr)
    return theory.trained_model(run, compose_config)


def print_tables(tables: dict, what: str, settings) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from nsrun.analysis.theory import coverage
    from nsrun.science.stability import theory

    console = Console(width=None if sys.stdout.isatty() else 150)

    def table(title, columns, rows):
        t = Table(title=escape(title))
        for c in columns:
            t.add_column(escape(c), justify="right")
        for row in rows:
            t.add_row(*row)
        console.print(t)

    table("ReLU: E[ReLU(X)ReLU(Y)], closed form (Theorem 5.1) vs Monte Carlo",
          ("rho", "closed form", "Monte Carlo", "stderr", "z", "normalised 2k(rho)"),
          [(f"{r['rho']:g}", f"{r['closed_form']:.5f}", f"{r['monte_carlo']:.5f}", f"{r['stderr']:.5f}",
            f"{r['z']:+.2f}", f"{r['normalised']:.5f}") for r in tables["relu"]])
    table(f"ReLU layer recurrence from rho_0 = {tables['rho0']:g}: unnormalised rho_L = k(rho_L-1) -> "
          f"{theory.relu_fixed_point():.5f}; normalised rho_L = 2k(rho_L-1) -> 1",
          ("layer", "unnormalised", "normalised", "random ReLU net (width 1024), MC"),
          [(str(r["layer"]), f"{r['unnormalised']:.5f}", f"{r['normalised']:.5f}", f"{r['relu_net_mc']:.5f}")
           for r in tables["recurrence"]])
    table("Attention on Gaussian tokens (d 64, T 8): sum_j E[out_j(X) out_j(Y)]",
          ("rho", "identity W: rho||W_V||^2", "MC", "s(rho)", "random W: rho s ||W_V||^2", "MC"),
          [(f"{r['rho']:g}", f"{r['identity_pred']:.3f}", f"{r['identity_mc']:.3f} ± {r['identity_se']:.3f}",
            f"{r['s_rho']:.3f}", f"{r['random_pred']:.3f}", f"{r['random_mc']:.3f} ± {r['random_se']:.3f}")
           for r in tables["attention"]])
    t = Table(title=escape(f"Interval propagation, {what}: E[h(X).h(Y)]/D per stage ({settings.noise} noise, "
                           f"{tables['n_inputs']} {settings.split} inputs x {settings.n_repeats} draws); "
                           "normalised by E[h(X).h(X)]/D"))
    for c in ("rho", "stage", "predicted [lower, upper]", "measured ± se", "normalised [lo, hi]", "norm. meas.",
              "inside"):
        t.add_column(escape(c), justify="right")
    for r in tables["intervals"]:
        t.add_row(f"{r['rho']:g}", r["stage"], escape(f"[{r['lower']:.4g}, {r['upper']:.4g}]"),
                  f"{r['measured']:.4g} ± {r['stderr']:.2g}",
                  escape(f"[{r['norm_lower']:.3f}, {r['norm_upper']:.3f}]"),
                  f"{r['norm_measured']:.3f}", "yes" if r["inside"] else "[red]no[/red]")
    console.print(t)
    covered, total = coverage(tables["intervals"])
    console.print(f"measured value inside the predicted interval (± 2 se): {covered}/{total} stage-rho pairs")


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from nsrun.analysis.theory import theory_tables, write_outputs
    from nsrun.runner.errors import ConfigError, UsageError

    try:
        cfg, task, model, what = load_model(args)
    except (ConfigError, UsageError) as e:
        fail(str(e))
    tables = theory_tables(cfg, task, model, args.settings)
    print_tables(tables, what, args.settings)
    out = Path(args.out) if args.out else (Path(args.run) / "theory" if args.run else Path("theory"))
    write_outputs(tables, what, out)
    print(f"wrote {out}/relu.csv, recurrence.csv, attention.csv, intervals.csv, theory.png, intervals.png")


if __name__ == "__main__":
    main()
