"""Theory vs measurement for one model (SCIENCE.md section 3), as tables: the ReLU closed form vs Monte Carlo,
the layer recurrence, attention on Gaussian tokens, and the per-stage interval propagation beside the
measured cross moment. The computations are :mod:`nsrun.science.stability.theory`; this module picks the
model (random init from a composed config, or a run directory's config and checkpoint) and lays out the rows
that ``nsrun-theory`` prints and writes and that the reproduction's figure 5 and claim 5 read.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nsrun.runner.errors import UsageError
from nsrun.runner.rundir import RunDir

NOISES = ("token", "gaussian")
SPLITS = ("train", "val")
ROUTES = ("data", "gaussian")
TABLES = ("relu", "recurrence", "attention", "intervals")


@dataclass(frozen=True)
class TheorySettings:
    """Sizes of the Monte-Carlo checks and of the per-stage measurement."""

    rhos: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
    noise: str = "token"        # noise of the per-stage measurement
    split: str = "val"          # its inputs
    n_examples: int = 1024
    n_repeats: int = 4
    mc_samples: int = 200_000   # pairs for the ReLU Monte Carlo
    depth: int = 10             # layers of the ReLU recurrence table
    route: str = "data"         # where s(rho) of each attention layer is sampled: data | gaussian
    seed: int = 0               # seed of the noise and the synthetic checks

    def __post_init__(self):
        if not self.rhos or not all(0.0 <= r <= 1.0 for r in self.rhos):
            raise ValueError(f"--rhos: must be numbers in [0, 1], got {list(self.rhos)}")
        for key, allowed in (("noise", NOISES), ("route", ROUTES), ("split", SPLITS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"--{key}: must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        for key in ("n_examples", "n_repeats", "mc_samples", "depth"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')}: must be an integer >= 1, got {getattr(self, key)}")


# the reproduction's figure 5 at three sizes (rhos 0, 0.25, 0.5, 0.9)
LEVELS = {
    "full": TheorySettings(rhos=(0.0, 0.25, 0.5, 0.9), n_examples=1024, mc_samples=200_000),
    "quick": TheorySettings(rhos=(0.0, 0.25, 0.5, 0.9), n_examples=256, mc_samples=50_000),
    "smoke": TheorySettings(rhos=(0.0, 0.25, 0.5, 0.9), n_examples=32, mc_samples=2000, n_repeats=1, depth=3),
}


def build(cfg, state_dict: dict | None = None):
    """``(task, model)`` of a validated config, with ``state_dict`` loaded (else its random init at cfg.seed)."""
    import torch

    from nsrun.runner.config import build_model, build_task, validate

    validate(cfg)
    task = build_task(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, task)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    model.eval()
    return task, model


def random_model(cfg):
    """``(cfg, task, model, description)`` of the random-init model of a composed config."""
    task, model = build(cfg)
    return cfg, task, model, f"random init (seed {cfg.seed})"


def known_keys(saved: dict, defaults) -> dict:
    """``saved`` without the keys that ``defaults`` (a composed config) does not have, at every level."""
    from omegaconf import DictConfig

    return {k: known_keys(v, defaults[k]) if isinstance(v, dict) and isinstance(defaults[k], DictConfig) else v
            for k, v in saved.items() if k in defaults}


def trained_model(run: RunDir, compose: Callable[[list[str]], object]):
    """``(cfg, task, model, description)`` of a run directory's config and newest loadable checkpoint. The
    run's values go over today's defaults composed (``compose(overrides)``) with the run's option of each
    config group (task, reg, noise, optim, logger, ...): keys added since the run get their defaults, keys
    that today's options no longer have (e.g. ``reg.rho`` of an old ``reg=none`` run) are dropped. Raises
    UsageError when ``run`` has no config or no checkpoint."""
    from omegaconf import OmegaConf

    from nsrun.runner.config import OPTIONS

    saved = run.read_config()
    ckpt = run.load_checkpoint() if saved is not None else None
    if saved is None or ckpt is None:
        raise UsageError(f"{run.path} is not a run directory (needs {run.config_path.name} and "
                         f"{run.checkpoint_path.relative_to(run.path)})")
    options = [f"{group}={saved[group]['name']}" for group in OPTIONS
               if isinstance(saved.get(group), dict) and saved[group].get("name")]
    defaults = compose(options)
    cfg = OmegaConf.merge(defaults, known_keys(saved, defaults))
    task, model = build(cfg, ckpt["model"])
    return cfg, task, model, f"newest checkpoint of {run.path} (step {ckpt['step']})"


def theory_tables(cfg, task, model, settings: TheorySettings) -> dict:
    """The rows of the four tables (``relu``, ``recurrence``, ``attention``, ``intervals``) and ``rho0``, the
    starting rho of the recurrence. One generator seeded with ``settings.seed`` feeds every table in order."""
    import torch

    from nsrun.science.stability import theory
    from nsrun.science.stability.monitor import fixed_subset
    from nsrun.science.stability.noise import embedding_scale

    rhos = list(settings.rhos)
    gen = torch.Generator().manual_seed(settings.seed)
    relu_rows = theory.relu_table(rhos, settings.mc_samples, gen)
    rho0 = 0.5 if 0.5 in rhos else rhos[len(rhos) // 2]
    unnorm = theory.relu_recurrence(rho0, settings.depth)
    norm = theory.relu_recurrence(rho0, settings.depth, normalised=True)
    net = theory.relu_network_monte_carlo(rho0, settings.depth, 1024, 64, gen)
    rec_rows = [{"layer": i, "unnormalised": u, "normalised": n, "relu_net_mc": m}
                for i, (u, n, m) in enumerate(zip(unnorm, norm, net, strict=True))]
    att_rows = theory.attention_table(rhos, 64, 8, 2000, gen)

    data = getattr(task, settings.split)
    subset = fixed_subset(len(data.x), settings.n_examples, cfg.seed, 0 if settings.split == "train" else 1)
    x = data.x if subset is None else data.x[subset]
    sigma = cfg.stability.sigma if "stability" in cfg and cfg.stability.sigma else embedding_scale(
        model.token_embeddings, task.noise_tokens)
    stage_rows = []
    for rho in rhos:
        for row in theory.interval_propagation(model, task, x, rho, settings.noise, settings.n_repeats, sigma,
                                               task.resample_mask, activation=cfg.model.activation,
                                               route=settings.route, generator=gen):
            n_lo, n_hi, n_meas = row.normalised()
            stage_rows.append({"stage": row.stage, "rho": rho, "route_s": row.route_agreement,
                               "lower": row.lower, "upper": row.upper,
                               "measured": row.measured, "stderr": row.stderr, "self_moment": row.self_moment,
                               "norm_lower": n_lo, "norm_upper": n_hi, "norm_measured": n_meas,
                               "inside": row.inside})
    return {"relu": relu_rows, "recurrence": rec_rows, "attention": att_rows, "intervals": stage_rows,
            "rho0": rho0, "n_inputs": len(x)}


def write_tables(tables: dict, out: Path) -> list[Path]:
    """``relu.csv``, ``recurrence.csv``, ``attention.csv`` and ``intervals.csv`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TABLES:
        path = out / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(tables[name][0]))
            w.writeheader()
            w.writerows(tables[name])
        paths.append(path)
    return paths


def coverage(rows: list[dict]) -> tuple[int, int]:
    """How many stage-rho pairs hold the measurement inside the predicted interval (± 2 se), of how many."""
    return sum(bool(r["inside"]) for r in rows), len(rows)


def write_outputs(tables: dict, what: str, out: Path) -> list[Path]:
    """nsrun-theory's files: the four csv tables, ``theory.png`` and ``intervals.png`` (``what``: the model)."""
    from nsrun.analysis import figures

    paths = write_tables(tables, out)
    paths += figures.save(figures.plot_theory(tables), out, "theory", ("png",), dpi=120)
    paths += figures.save(figures.plot_intervals(tables["intervals"], what), out, "intervals", ("png",), dpi=120)
    return paths
