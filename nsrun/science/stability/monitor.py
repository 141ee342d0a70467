"""Stability logging at eval steps (the ``stability:`` section of conf/config.yaml, as :class:`MonitorSettings`).

For each split in ``splits``, on a fixed random subset of ``n_examples`` inputs (chosen from the run seed),
and each noise in ``noises`` and rho in ``rhos``, the row gets

* ``stab_{noise}_{split}_rho{rho:g}``: ``E <p(X), p(Y)>`` (``..._se``: its standard error),
* ``nstab_{noise}_{split}_rho{rho:g}``: the normalised ``E <p(X), p(Y)> / E <p(X), p(X)>``,
* ``avgsens_{split}`` (and ``_se``): average sensitivity ``sum_i E ||p(x) - p(x^(i))||^2`` (``sensitivity``;
  with ``sensitivity_positions = m``, estimated from m positions drawn at random at each eval),
* ``hstab_{noise}_{split}_rho{rho:g}_l{l}`` / ``nhstab_...``: per-layer cross moment
  ``E[h_l(X) . h_l(Y)] / D`` of the residual stream after block l and its normalised form (``per_layer``),
* ``exact_*`` (``exact``, token noise only, tasks whose inputs can be enumerated): the exact token-noise
  stability and average sensitivity on each whole split and under the uniform measure, and the Efron-Stein
  weights by degree, from one forward pass over every input (:mod:`nsrun.science.stability.exact`).

The noise comes from a generator seeded by ``(seed, step)`` only, so a resumed run logs identical values.
"""

from __future__ import annotations

import torch

from nsrun.science.stability.estimators import (
    average_sensitivity,
    batched,
    cross_moments,
    gaussian_stability,
    noise_stability,
)
from nsrun.science.stability.exact import exact_metrics
from nsrun.science.stability.noise import (
    embedding_scale,
    gaussian_mask,
    gaussian_noise,
    token_noise,
)
from nsrun.science.stability.settings import SPLITS, MonitorSettings

__all__ = ["SPLITS", "MonitorSettings", "eval_generator", "fixed_subset", "stability_metrics"]

REUSE_LIMIT = 2**25  # floats (128 MiB) of clean outputs held for reuse at one eval


def eval_generator(seed: int, step: int) -> torch.Generator:
    """The eval-noise generator: a function of (seed, step) only."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) * 2 + 1)


def fixed_subset(n_total: int, n_examples: int | None, seed: int, split_index: int) -> torch.Tensor | None:
    if n_examples is None or n_examples >= n_total:
        return None
    g = torch.Generator().manual_seed(int(seed) * 7_919 + 104_729 * (split_index + 1))
    return torch.randperm(n_total, generator=g)[:n_examples].sort().values


def _key(rho: float) -> str:
    return f"rho{float(rho):g}"


@torch.no_grad()
def stability_metrics(model, task, settings: MonitorSettings, seed: int, step: int,
                      batch_size: int | None = None) -> dict[str, float]:
    """The stability columns of an eval row (see the module docstring for the key names); ``model`` follows
    the model protocol, ``batch_size`` bounds the examples per forward pass (None: one pass)."""
    was_training = model.training
    model.eval()
    gen = eval_generator(seed, step)
    row: dict[str, float] = {}
    mask = task.resample_mask
    gauss_mask = gaussian_mask(mask, settings.gaussian_on)
    f = lambda t: task.output_probs(model(t))
    f_emb = lambda e: task.output_probs(model(embeddings=e))
    bs = batch_size
    whole_splits = {}
    for split_index, split in enumerate(SPLITS):
        if split not in settings.splits:
            continue
        data = task.val_split(step) if split == "val" else task.train
        x = whole_splits[split] = data.x
        subset = fixed_subset(len(x), settings.n_examples, seed, split_index)
        x = x if subset is None else x[subset.to(x.device)]
        # the clean outputs are computed once and shared by every rho, both noises and the sensitivity, unless
        # per-position outputs [N, T, V] are too large to hold (then each estimator streams them)
        per_example = task.n_outputs * (1 if task.kind == "classification" else task.seq_len)
        clean = batched(f, bs)(x) if len(x) * per_example <= REUSE_LIMIT else None
        if "token" in settings.noises:
            for rho in settings.rhos:
                est = noise_stability(f, x, rho, task.noise_tokens, mask, settings.n_repeats, gen, bs, clean)
                _put(row, f"token_{split}_{_key(rho)}", est)
        if "gaussian" in settings.noises:
            e = model.embed(x)
            sigma = settings.sigma or embedding_scale(model.token_embeddings, task.noise_tokens)
            for rho in settings.rhos:  # model(embeddings=model.embed(x)) is model(x): the clean outputs are shared
                est = gaussian_stability(f_emb, e, rho, sigma, gauss_mask, settings.n_repeats, gen, bs, clean)
                _put(row, f"gaussian_{split}_{_key(rho)}", est)
        if settings.sensitivity:
            sens = average_sensitivity(f, x, task.noise_tokens, mask, settings.n_repeats, gen, bs, clean,
                                       settings.sensitivity_positions)
            row[f"avgsens_{split}"] = sens.total
            row[f"avgsens_{split}_se"] = sens.stderr
        if settings.per_layer:
            row.update(_per_layer(model, task, settings, x, split, gen, gauss_mask))
    if settings.exact:
        row.update(exact_metrics(f, task, settings.rhos, whole_splits, bs))
    if was_training:
        model.train()
    return row


def _put(row: dict, suffix: str, est) -> None:
    row[f"stab_{suffix}"] = est.mean
    row[f"stab_{suffix}_se"] = est.stderr
    row[f"nstab_{suffix}"] = est.normalised


def _per_layer(model, task, settings: MonitorSettings, x, split, gen, gauss_mask) -> dict[str, float]:
    row = {}
    for noise in settings.noises:
        for rho in settings.rhos:
            if noise == "token":
                y = token_noise(x, rho, task.noise_tokens, task.resample_mask, gen)
                moments = cross_moments(model.stages, x, y)
            else:
                e = model.embed(x)
                sigma = settings.sigma or embedding_scale(model.token_embeddings, task.noise_tokens)
                moments = cross_moments(lambda t: model.stages(embeddings=t), e,
                                        gaussian_noise(e, rho, sigma, gen, gauss_mask))
            for layer, est in enumerate(moments, start=1):
                row[f"hstab_{noise}_{split}_{_key(rho)}_l{layer}"] = est.mean
                row[f"nhstab_{noise}_{split}_{_key(rho)}_l{layer}"] = est.normalised
    return row
