"""``nsrun-theory``: theory vs Monte Carlo for a random-init model (from config overrides) or a trained run.

    nsrun-theory model=tiny task.p=23                 # random init, composed like nsrun
    nsrun-theory --run outputs/2026-11-24/21-31-03    # the run's config and last checkpoint

Prints (rich) and writes under ``--out``: ``relu.csv`` (closed form vs Monte Carlo of E[ReLU(X)ReLU(Y)]),
``recurrence.csv`` (both forms of the layer recurrence beside a random ReLU network), ``attention.csv``
(identity-W and random-W predictions vs Monte Carlo) and ``intervals.csv`` (per stage of the model, the
predicted [lower, upper] interval on E[h(X) . h(Y)] / D beside the measurement), with ``theory.png`` and
``intervals.png``. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(f"nsrun-theory: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="nsrun-theory", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides for a random-init model (as for nsrun)")
    p.add_argument("--run", help="a run directory: use its resolved config and last checkpoint")
    p.add_argument("--rhos", default="0,0.25,0.5,0.75,0.9,1", help="comma-separated rho values in [0, 1]")
    p.add_argument("--noise", default="token", help="token | gaussian (noise for the per-stage measurement)")
    p.add_argument("--split", default="val", help="train | val: inputs for the per-stage measurement")
    p.add_argument("--n-examples", type=int, default=1024)
    p.add_argument("--n-repeats", type=int, default=4)
    p.add_argument("--mc-samples", type=int, default=200_000, help="pairs for the ReLU Monte Carlo")
    p.add_argument("--depth", type=int, default=10, help="layers of the ReLU recurrence table")
    p.add_argument("--route", default="data", help="data | gaussian: where s(rho) of each attention layer is "
                   "sampled (the layer's attention on the clean/noisy inputs, or Gaussian tokens)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the synthetic checks")
    p.add_argument("--out", help="output folder (default: RUN/theory with --run, else ./theory)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        if e.code:
            fail("could not parse the command line; see nsrun-theory --help")
        raise
    try:
        args.rhos = [float(r) for r in args.rhos.split(",") if r.strip()]
    except ValueError:
        fail(f"--rhos: must be comma-separated numbers in [0, 1], got {args.rhos!r}")
    if not args.rhos or not all(0.0 <= r <= 1.0 for r in args.rhos):
        fail(f"--rhos: must be numbers in [0, 1], got {args.rhos}")
    if args.noise not in ("token", "gaussian"):
        fail(f"--noise: must be one of token, gaussian, got {args.noise!r}")
    if args.route not in ("data", "gaussian"):
        fail(f"--route: must be one of data, gaussian, got {args.route!r}")
    if args.split not in ("train", "val"):
        fail(f"--split: must be one of train, val, got {args.split!r}")
    for key in ("n_examples", "n_repeats", "mc_samples", "depth"):
        if getattr(args, key) < 1:
            fail(f"--{key.replace('_', '-')}: must be an integer >= 1, got {getattr(args, key)}")
    if args.run and args.overrides:
        fail("give either --run or config overrides, not both")
    return args


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nsrun.commands.nsrun import CONF_DIR, format_hydra_error
    from nsrun.runner.errors import UsageError

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    except Exception as e:
        raise UsageError(format_hydra_error(e, None)) from None
    finally:
        GlobalHydra.instance().clear()


def load_model(args):
    """(cfg, task, model, description) from a run directory or from composed overrides."""
    from omegaconf import OmegaConf

    from nsrun.runner.config import validate
    from nsrun.runner.errors import UsageError

    if args.run:
        run = Path(args.run)
        cfg_path, ckpt_path = run / "resolved_config.yaml", run / "checkpoints" / "last.pt"
        if not cfg_path.exists() or not ckpt_path.exists():
            raise UsageError(f"{run} is not a run directory (needs resolved_config.yaml and checkpoints/last.pt)")
    cfg = compose_config([] if args.run else list(args.overrides))
    if args.run:
        # the run's config over today's defaults, so keys added since the run was made get their defaults
        OmegaConf.set_struct(cfg, False)
        cfg = OmegaConf.merge(cfg, OmegaConf.load(cfg_path))
    validate(cfg)
    import torch

    from nsrun.runner.objective import build_model, build_task

    task = build_task(cfg.task)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, task)
    if args.run:
        from nsrun.runner.checkpoint import load_checkpoint

        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        what = f"checkpoint {ckpt_path} (step {ckpt['step']})"
    else:
        what = f"random init (seed {cfg.seed})"
    model.eval()
    return cfg, task, model, what


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def run(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from nsrun.science.stability import theory
    from nsrun.science.stability.monitor import fixed_subset
    from nsrun.science.stability.noise import embedding_scale

    cfg, task, model, what = load_model(args)
    out = Path(args.out) if args.out else (Path(args.run) / "theory" if args.run else Path("theory"))
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=None if sys.stdout.isatty() else 150)
    gen = torch.Generator().manual_seed(args.seed)

    relu_rows = theory.relu_table(args.rhos, args.mc_samples, gen)
    t = Table(title=escape("ReLU: E[ReLU(X)ReLU(Y)], closed form (Theorem 5.1) vs Monte Carlo"))
    for c in ("rho", "closed form", "Monte Carlo", "stderr", "z", "normalised 2k(rho)"):
        t.add_column(escape(c), justify="right")
    for r in relu_rows:
        t.add_row(f"{r['rho']:g}", f"{r['closed_form']:.5f}", f"{r['monte_carlo']:.5f}", f"{r['stderr']:.5f}",
                  f"{r['z']:+.2f}", f"{r['normalised']:.5f}")
    console.print(t)
    write_csv(out / "relu.csv", relu_rows)

    rho0 = 0.5 if 0.5 in args.rhos else args.rhos[len(args.rhos) // 2]
    unnorm = theory.relu_recurrence(rho0, args.depth)
    norm = theory.relu_recurrence(rho0, args.depth, normalised=True)
    net = theory.relu_network_monte_carlo(rho0, args.depth, 1024, 64, gen)
    rec_rows = [{"layer": i, "unnormalised": u, "normalised": n, "relu_net_mc": m}
                for i, (u, n, m) in enumerate(zip(unnorm, norm, net, strict=True))]
    t = Table(title=escape(f"ReLU layer recurrence from rho_0 = {rho0:g}: unnormalised rho_L = k(rho_L-1) -> "
                    f"{theory.relu_fixed_point():.5f}; normalised rho_L = 2k(rho_L-1) -> 1"))
    for c in ("layer", "unnormalised", "normalised", "random ReLU net (width 1024), MC"):
        t.add_column(escape(c), justify="right")
    for r in rec_rows:
        t.add_row(str(r["layer"]), f"{r['unnormalised']:.5f}", f"{r['normalised']:.5f}", f"{r['relu_net_mc']:.5f}")
    console.print(t)
    write_csv(out / "recurrence.csv", rec_rows)

    att_rows = theory.attention_table(args.rhos, 64, 8, 2000, gen)
    t = Table(title=escape("Attention on Gaussian tokens (d 64, T 8): sum_j E[out_j(X) out_j(Y)]"))
    for c in ("rho", "identity W: rho||W_V||^2", "MC", "s(rho)", "random W: rho s ||W_V||^2", "MC"):
        t.add_column(escape(c), justify="right")
    for r in att_rows:
        t.add_row(f"{r['rho']:g}", f"{r['identity_pred']:.3f}", f"{r['identity_mc']:.3f} ± {r['identity_se']:.3f}",
                  f"{r['s_rho']:.3f}", f"{r['random_pred']:.3f}", f"{r['random_mc']:.3f} ± {r['random_se']:.3f}")
    console.print(t)
    write_csv(out / "attention.csv", att_rows)

    data = getattr(task, args.split)
    subset = fixed_subset(len(data.x), args.n_examples, cfg.seed, 0 if args.split == "train" else 1)
    x = data.x if subset is None else data.x[subset]
    sigma = cfg.stability.sigma if "stability" in cfg and cfg.stability.sigma else embedding_scale(
        model.tok_emb.weight, task.noise_tokens)
    gauss_mask = task.resample_mask
    stage_rows = []
    for rho in args.rhos:
        for row in theory.interval_propagation(model, task, x, rho, args.noise, args.n_repeats, sigma, gauss_mask,
                                               activation=cfg.model.activation, route=args.route,
                                               generator=gen):
            n_lo, n_hi, n_meas = row.normalised()
            stage_rows.append({"stage": row.stage, "rho": rho, "route_s": row.route_agreement,
                               "lower": row.lower, "upper": row.upper,
                               "measured": row.measured, "stderr": row.stderr, "self_moment": row.self_moment,
                               "norm_lower": n_lo, "norm_upper": n_hi, "norm_measured": n_meas,
                               "inside": row.inside})
    t = Table(title=escape(f"Interval propagation, {what}: E[h(X).h(Y)]/D per stage ({args.noise} noise, "
                    f"{len(x)} {args.split} inputs x {args.n_repeats} draws); normalised by E[h(X).h(X)]/D"))
    for c in ("rho", "stage", "predicted [lower, upper]", "measured ± se", "normalised [lo, hi]", "norm. meas.",
              "inside"):
        t.add_column(escape(c), justify="right")
    for r in stage_rows:
        t.add_row(f"{r['rho']:g}", r["stage"], escape(f"[{r['lower']:.4g}, {r['upper']:.4g}]"),
                  f"{r['measured']:.4g} ± {r['stderr']:.2g}",
                  escape(f"[{r['norm_lower']:.3f}, {r['norm_upper']:.3f}]"),
                  f"{r['norm_measured']:.3f}", "yes" if r["inside"] else "[red]no[/red]")
    console.print(t)
    write_csv(out / "intervals.csv", stage_rows)
    covered = sum(r["inside"] for r in stage_rows)
    console.print(f"measured value inside the predicted interval (± 2 se): {covered}/{len(stage_rows)} stage-rho pairs")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    grid = np.linspace(0, 1, 201)
    axes[0].plot(grid, theory.relu_kernel(grid), label="closed form k(rho)")
    axes[0].errorbar([r["rho"] for r in relu_rows], [r["monte_carlo"] for r in relu_rows],
                     yerr=[2 * r["stderr"] for r in relu_rows], fmt="o", label="Monte Carlo ± 2 se")
    axes[0].set(xlabel="rho", ylabel="E[ReLU(X) ReLU(Y)]", title="ReLU (unnormalised)")
    axes[0].legend()
    layers = [r["layer"] for r in rec_rows]
    axes[1].plot(layers, unnorm, "o-", label="unnormalised k")
    axes[1].plot(layers, norm, "s-", label="normalised 2k")
    axes[1].plot(layers, net, "x--", label="random ReLU net (normalised), MC")
    axes[1].axhline(theory.relu_fixed_point(), color="grey", lw=0.8, ls=":")
    axes[1].set(xlabel="layer L", ylabel="rho_L", title=f"ReLU recurrence from rho_0 = {rho0:g}")
    axes[1].legend()
    axes[2].plot(grid, [theory.attention_identity_prediction(r, torch.eye(1)).item() for r in grid],
                 label="identity W: rho (per unit ||W_V||^2)")
    rhos = [r["rho"] for r in att_rows]
    for key, style, label in (("identity_mc", "o", "MC, W = I"), ("random_pred", "s-", "random W: rho s(rho)"),
                              ("random_mc", "x", "MC, random W")):
        axes[2].plot(rhos, [r[key] / r["wv_norm2"] for r in att_rows], style, label=label)
    axes[2].set(xlabel="rho", ylabel="stability / ||W_V||^2", title="attention (Thm 5.2/5.3)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out / "theory.png", dpi=120)
    plt.close(fig)

    stages = list(dict.fromkeys(r["stage"] for r in stage_rows))
    fig, axes = plt.subplots(1, len(args.rhos), figsize=(3.2 * len(args.rhos) + 1, 4.2), sharey=True, squeeze=False)
    for ax, rho in zip(axes[0], args.rhos, strict=True):
        rows = [r for r in stage_rows if r["rho"] == rho]
        pos = np.arange(len(rows))
        lo = np.array([r["norm_lower"] for r in rows])
        hi = np.array([r["norm_upper"] for r in rows])
        ax.bar(pos, hi - lo, bottom=lo, width=0.6, alpha=0.35, label="predicted interval")
        ax.plot(pos, [r["norm_measured"] for r in rows], "ko", ms=4, label="Monte Carlo")
        ax.set_xticks(pos, stages, rotation=70, fontsize=7)
        ax.set_title(f"rho = {rho:g}")
    axes[0][0].set_ylabel("E[h(X).h(Y)] / E[h(X).h(X)]  (normalised)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"interval propagation vs measurement: {what}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "intervals.png", dpi=120)
    plt.close(fig)
    console.print(f"wrote {out}/relu.csv, recurrence.csv, attention.csv, intervals.csv, theory.png, intervals.png")


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from nsrun.runner.errors import ConfigError, UsageError

    try:
        run(args)
    except (ConfigError, UsageError) as e:
        fail(str(e))


if __name__ == "__main__":
    main()
