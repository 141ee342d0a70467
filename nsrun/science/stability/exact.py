"""Exact token-noise stability, average sensitivity and Efron-Stein weights on an enumerable input space.

The grid: every input whose P resampleable positions (``task.resample_mask``) hold noise tokens (K of them,
``task.noise_tokens``) and whose other positions hold the task's fixed tokens (modadd's '=', parity's
readout), K^P inputs in all, at most :data:`MAX_GRID`. One forward pass over the grid gives ``f`` everywhere
(``f(x)`` = the task's output probability vector; vectors per position are scaled by ``1/sqrt(T)`` so that
plain dot products are the estimators' position-averaged ``inner``), and with it, with no Monte Carlo:

* token noise with ``r = (1 + rho)/2`` is the operator ``T_r = prod_j (r I + (1 - r) M_j)`` on the grid,
  ``M_j`` the mean over coordinate j (a redraw is uniform over the K tokens, the kept one included), so
  ``E[f(Y) | X = x] = (T_r f)(x)``;
* stability over a set D of inputs (the training or the validation split):
  ``Stab_D = (1/|D|) sum_{x in D} sum_y P(y|x) <f(x), f(y)> = (1/|D|) sum_{x in D} <f(x), (T_r f)(x)>`` with
  ``P(y|x) = prod_j (r [y_j = x_j] + (1 - r)/K)``; ``Stab_D / (1/|D|) sum_{x in D} ||f(x)||^2`` normalised;
* average sensitivity over D: ``AS_D = sum_j (1/|D|) sum_{x in D} E_{x_j'} ||f(x) - f(x^(j))||^2``
  ``= sum_j mean_D (||f||^2 - 2 <f, M_j f> + M_j ||f||^2)``;
* under the uniform measure on the grid, the Efron-Stein weights ``W(S)``
  (:func:`nsrun.science.stability.spectrum.efron_stein_weights`), ``Stab = sum_S r^|S| W(S)`` and
  ``AS = 2 sum_S |S| W(S)``.

A split is not a product measure, so its stability has no Efron-Stein form; it is computed from ``T_r f``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from nsrun.science.stability.spectrum import (
    effective_correlation,
    efron_stein_weights,
    stability_from_weights,
    weights_by_degree,
)

MAX_GRID = 2**16  # inputs: modadd with p <= 251 (operands only) or p <= 37 (every position); parity n <= 16
MAX_NAMED_SUBSETS = 3  # with at most this many coordinates, the weight of every subset is logged by name


@dataclass(frozen=True)
class InputGrid:
    """Every input of a task: ``tokens [K^P, T]``, row ``sum_j k_j K^(P-1-j)`` holding ``noise_tokens[k_j]`` at
    ``positions[j]`` (coordinate j) and ``fixed`` elsewhere."""

    tokens: torch.Tensor
    positions: tuple[int, ...]
    noise_tokens: torch.Tensor
    fixed: torch.Tensor  # [T]; its entries at the resampleable positions are unused

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.noise_tokens),) * len(self.positions)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The row of each input of ``x [N, T]`` (ValueError if one is not on the grid)."""
        x = x.cpu()
        n_tokens = len(self.noise_tokens)
        lookup = torch.full((int(max(x.max(), self.noise_tokens.max())) + 1,), -1, dtype=torch.long)
        lookup[self.noise_tokens] = torch.arange(n_tokens)
        coordinates = lookup[x[:, list(self.positions)]]
        other = torch.ones(x.shape[1], dtype=torch.bool)
        other[list(self.positions)] = False
        if (coordinates < 0).any() or not (x[:, other] == self.fixed[other]).all():
            raise ValueError("inputs off the grid: a resampleable position holds a token that is not a noise token, "
                             "or another position differs from the task's fixed token")
        strides = n_tokens ** torch.arange(len(self.positions) - 1, -1, -1)
        return (coordinates * strides).sum(1)


def grid_size(n_tokens: int, n_positions: int) -> int:
    return int(n_tokens) ** int(n_positions)


def input_grid(task, max_size: int = MAX_GRID) -> InputGrid:
    """The grid of ``task`` (module docstring); ValueError if it has more than ``max_size`` inputs."""
    mask = task.resample_mask.bool().cpu()
    positions = tuple(torch.nonzero(mask).flatten().tolist())
    noise_tokens = task.noise_tokens.cpu()
    size = grid_size(len(noise_tokens), len(positions))
    if size > max_size:
        raise ValueError(f"task {task.name} has {len(noise_tokens)}^{len(positions)} = {size:,} inputs to enumerate, "
                         f"more than {max_size:,}")
    fixed = task.train.x[0].cpu().clone()
    codes = torch.cartesian_prod(*[torch.arange(len(noise_tokens))] * len(positions)).reshape(size, len(positions))
    tokens = fixed.repeat(size, 1)
    tokens[:, list(positions)] = noise_tokens[codes]
    return InputGrid(tokens, positions, noise_tokens, fixed)


@torch.no_grad()
def grid_outputs(f: Callable, grid: InputGrid, batch_size: int | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """``f`` on every input, ``[K, ..., K, C]`` float64 on the CPU (per-position outputs ``[T, V]`` flattened
    and scaled by ``1/sqrt(T)``); one pass over the grid, ``batch_size`` inputs at a time (None: one call), the
    inputs on ``device``."""
    step = batch_size or len(grid.tokens)
    outputs = [f(grid.tokens[i : i + step].to(device)).double().cpu() for i in range(0, len(grid.tokens), step)]
    out = torch.cat(outputs)
    positions_out = out[0].numel() // out.shape[-1]
    return (out.reshape(len(out), -1) / math.sqrt(positions_out)).reshape(*grid.shape, -1)


def noise_operator(values: torch.Tensor, rho: float) -> torch.Tensor:
    """``T_r f = prod_j (r I + (1 - r) M_j) f``, ``r = (1 + rho)/2``: ``E[f(Y) | X = x]`` under token noise."""
    r = effective_correlation(rho)
    out = values
    for j in range(values.dim() - 1):
        out = r * out + (1.0 - r) * out.mean(j, keepdim=True)
    return out


def stability_per_input(values: torch.Tensor, rho: float) -> torch.Tensor:
    """``<f(x), (T_r f)(x)> = E[<f(X), f(Y)> | X = x]`` for every input x of the grid: ``[K^P]``."""
    return (values * noise_operator(values, rho)).sum(-1).reshape(-1)


def influences_per_input(values: torch.Tensor) -> torch.Tensor:
    """``E_{x_j'} ||f(x) - f(x^(j))||^2 = ||f(x)||^2 - 2 <f(x), (M_j f)(x)> + (M_j ||f||^2)(x)`` for each
    coordinate j and input x: ``[P, K^P]``."""
    squares = values.pow(2).sum(-1)
    return torch.stack([
        (squares - 2 * (values * values.mean(j, keepdim=True)).sum(-1) + squares.mean(j, keepdim=True)).reshape(-1)
        for j in range(values.dim() - 1)
    ])


def _over(per_input: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Mean over the last dim of ``per_input [..., G]`` at ``rows`` (repeats count), or over the grid (None)."""
    return (per_input if rows is None else per_input[..., rows.to(per_input.device)]).mean(-1)


def exact_stability(values: torch.Tensor, rho: float, rows: torch.Tensor | None = None) -> tuple[float, float]:
    """``(E <f(X), f(Y)>, E <f(X), f(X)>)`` with X over ``rows`` of the grid (None: uniform over the grid)."""
    return (float(_over(stability_per_input(values, rho), rows)),
            float(_over(values.pow(2).sum(-1).reshape(-1), rows)))


def exact_influences(values: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``Inf_j = E_x E_{x_j'} ||f(x) - f(x^(j))||^2`` for each coordinate j, x over ``rows`` (None: uniform);
    ``sum_j Inf_j`` is the average sensitivity."""
    return _over(influences_per_input(values), rows)


def _rho_key(rho: float) -> str:
    return f"rho{float(rho):g}"


def subset_name(mask: int, positions: Sequence[int]) -> str:
    """``set0_1`` for the subset {positions[0], positions[1]} (named by input position)."""
    return "set" + "_".join(str(p) for j, p in enumerate(positions) if mask >> j & 1)


@torch.no_grad()
def exact_metrics(f: Callable, task, rhos: Sequence[float], splits: Mapping[str, torch.Tensor],
                  batch_size: int | None = None, grid: InputGrid | None = None) -> dict[str, float]:
    """The exact columns of an eval row (docs/stability.md): for each split name -> inputs ``x [N, T]`` and each
    rho, ``exact_stab_{split}_rho{rho}`` and ``exact_nstab_...``, and ``exact_avgsens_{split}``; the same under
    the uniform measure (split ``uniform``); the Efron-Stein weights by degree ``exact_weight_deg{d}`` and,
    with at most three resampleable positions, of every nonempty subset ``exact_weight_set{i}_{j}...``."""
    grid = grid or input_grid(task)
    values = grid_outputs(f, grid, batch_size, task.train.x.device)
    row: dict[str, float] = {}
    self_moments = values.pow(2).sum(-1).reshape(-1)
    stabilities = {rho: stability_per_input(values, rho) for rho in rhos}
    sensitivities = influences_per_input(values).sum(0)
    for split, x in splits.items():
        rows = grid.rows(x)
        self_moment = float(_over(self_moments, rows))
        for rho in rhos:
            stab = float(_over(stabilities[rho], rows))
            row[f"exact_stab_{split}_{_rho_key(rho)}"] = stab
            row[f"exact_nstab_{split}_{_rho_key(rho)}"] = stab / self_moment if self_moment else math.nan
        row[f"exact_avgsens_{split}"] = float(_over(sensitivities, rows))
    weights = efron_stein_weights(values)
    total = float(weights.sum())
    for rho in rhos:
        stab = stability_from_weights(weights, rho)
        row[f"exact_stab_uniform_{_rho_key(rho)}"] = stab
        row[f"exact_nstab_uniform_{_rho_key(rho)}"] = stab / total if total else math.nan
    row["exact_avgsens_uniform"] = float(sensitivities.mean())
    for degree, weight in enumerate(weights_by_degree(weights).tolist()):
        row[f"exact_weight_deg{degree}"] = weight
    if len(grid.positions) <= MAX_NAMED_SUBSETS:
        for mask in range(1, len(weights)):
            row[f"exact_weight_{subset_name(mask, grid.positions)}"] = float(weights[mask])
    return row
