"""Monte-Carlo estimators of noise stability and average sensitivity (SCIENCE.md sections 1-2).

Every estimator takes a callable ``f`` mapping inputs to output vectors, ``[N, C]`` (one vector per
example) or ``[N, T, V]`` (one per position; inner products are then averaged over positions **[ours]**).
The vectors are usually probabilities (``task.output_probs(model(x))``) but may be any real vectors.

* ``Stab_rho(f) = E <f(X), f(Y)>`` with ``Y`` a noisy copy of ``X``; ``self_mean = E <f(X), f(X)>``
  (= ``Stab_1``) and ``normalised = mean / self_mean`` **[ours]**.
* ``AS(f) = sum_i E || f(x) - f(x^(i)) ||^2`` over resampleable positions i, ``x^(i)`` = x with token i
  resampled uniformly; ``Inf_i`` is the i-th term **[ours: summed; mean_per_position = AS / #positions]**.

Standard errors treat the N examples as independent draws: each example's value is first averaged over
the ``n_repeats`` noise draws, and the stderr is ``std / sqrt(N)`` over examples (over draws if N = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from nsrun.science.stability.noise import gaussian_noise, resample_positions, token_noise


@dataclass
class StabilityEstimate:
    mean: float  # E <f(X), f(Y)>
    stderr: float
    self_mean: float  # E <f(X), f(X)>
    normalised: float  # mean / self_mean
    n: int  # number of (example, noise draw) pairs


@dataclass
class SensitivityEstimate:
    total: float  # sum_i Inf_i
    mean_per_position: float  # total / number of resampleable positions
    per_position: torch.Tensor  # [T] Inf_i, zero where not resampleable
    stderr: float  # of total
    n: int  # number of (example, position, draw) triples


def batched(f: Callable, batch_size: int | None) -> Callable:
    """``f`` applied in chunks of ``batch_size`` inputs along dim 0 (None: one call)."""
    if not batch_size:
        return f

    def apply(inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) <= batch_size:
            return f(inputs)
        return torch.cat([f(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])

    return apply


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a, b>`` over the last dim, averaged over any position dims: ``[N, ..., C] -> [N]``."""
    prod = (a.float() * b.float()).sum(-1)
    return prod.reshape(prod.shape[0], -1).mean(1)


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """``values [R, N]`` (R noise draws of N examples) -> (mean, stderr over examples)."""
    per_example = values.mean(0)
    if per_example.numel() > 1:
        se = per_example.std(unbiased=True) / math.sqrt(per_example.numel())
    elif values.shape[0] > 1:
        se = values.reshape(-1).std(unbiased=True) / math.sqrt(values.shape[0])
    else:
        se = torch.tensor(float("nan"))
    return float(values.mean()), float(se)


def _chunks(n: int, batch_size: int | None):
    step = batch_size or max(n, 1)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _estimate(f: Callable, inputs: torch.Tensor, noisy: torch.Tensor, n_repeats: int, batch_size: int | None,
              clean: torch.Tensor | None) -> StabilityEstimate:
    """``inputs [N, ...]``, ``noisy [R*N, ...]`` (draw-major) -> the estimate; outputs are formed
    ``batch_size`` examples at a time, so ``[N, T, V]`` outputs are never held whole."""
    n = inputs.shape[0]
    values = torch.empty(n_repeats, n, dtype=torch.float64)
    self_values = torch.empty(n, dtype=torch.float64)
    for sl in _chunks(n, batch_size):
        c = f(inputs[sl]) if clean is None else clean[sl]
        self_values[sl] = inner(c, c).double().cpu()
        for r in range(n_repeats):
            values[r, sl] = inner(c, f(noisy[r * n + sl.start : r * n + sl.stop])).double().cpu()
    mean, se = mean_and_stderr(values)
    self_mean = float(self_values.mean())
    return StabilityEstimate(mean, se, self_mean, mean / self_mean if self_mean else float("nan"), n * n_repeats)


@torch.no_grad()
def noise_stability(f: Callable, x: torch.Tensor, rho: float, noise_tokens: torch.Tensor,
                    resample_mask: torch.Tensor | None = None, n_repeats: int = 1,
                    generator: torch.Generator | None = None, batch_size: int | None = None,
                    clean: torch.Tensor | None = None) -> StabilityEstimate:
    """Token-noise stability ``E <f(X), f(Y)>`` over the examples ``x [N, T]`` and ``n_repeats`` noise draws
    each. ``clean`` may pass a precomputed ``f(x)``; ``batch_size`` bounds the examples per call of f."""
    noisy = torch.cat([token_noise(x, rho, noise_tokens, resample_mask, generator) for _ in range(n_repeats)])
    return _estimate(f, x, noisy, n_repeats, batch_size, clean)


@torch.no_grad()
def gaussian_stability(f_emb: Callable, e: torch.Tensor, rho: float, sigma: float,
                       mask: torch.Tensor | None = None, n_repeats: int = 1,
                       generator: torch.Generator | None = None, batch_size: int | None = None,
                       clean: torch.Tensor | None = None) -> StabilityEstimate:
    """Gaussian-noise stability ``E <f(e), f(e')>``, ``e' = rho e + sqrt(1 - rho^2) sigma g`` on the input
    embeddings ``e [N, T, D]`` (only at positions where ``mask [T]`` is true, if given); ``f_emb`` maps
    embeddings to outputs (e.g. ``lambda e: task.output_probs(model(embeddings=e))``)."""
    noisy = torch.cat([gaussian_noise(e, rho, sigma, generator, mask) for _ in range(n_repeats)])
    return _estimate(f_emb, e, noisy, n_repeats, batch_size, clean)


@torch.no_grad()
def average_sensitivity(f: Callable, x: torch.Tensor, noise_tokens: torch.Tensor,
                        resample_mask: torch.Tensor | None = None, n_repeats: int = 1,
                        generator: torch.Generator | None = None, batch_size: int | None = None,
                        clean: torch.Tensor | None = None, n_positions: int | None = None) -> SensitivityEstimate:
    """``AS = sum_i E || f(x) - f(x^(i)) ||^2`` over resampleable positions i (single-token resampling).

    With ``n_positions = m`` smaller than the number P of resampleable positions, m of them are drawn at random
    (from ``generator``) and the sum is estimated as ``P/m`` times the sum over the drawn ones (unbiased over
    the draw; the standard error is over examples and leaves out the variance of the choice of positions).
    ``per_position`` is NaN at the positions not drawn."""
    n, t = x.shape
    mask = torch.ones(t, dtype=torch.bool) if resample_mask is None else resample_mask.bool().cpu()
    positions = torch.nonzero(mask).flatten()
    n_resampleable = len(positions)
    per_position = torch.zeros(t)
    if n_resampleable == 0:
        return SensitivityEstimate(0.0, 0.0, per_position, 0.0, 0)
    if n_positions is not None and n_positions < n_resampleable:
        drawn = torch.randperm(n_resampleable, generator=generator)[:n_positions].sort().values
        per_position[positions] = float("nan")
        positions = positions[drawn]
    p = len(positions)
    sq = torch.zeros(n_repeats, p, n, dtype=torch.float64)
    resampled = [resample_positions(x, positions, noise_tokens, generator) for _ in range(n_repeats)]  # [P, N, T]
    for sl in _chunks(n, batch_size):
        c = (f(x[sl]) if clean is None else clean[sl]).float()
        for r in range(n_repeats):
            for j in range(p):
                diff = (f(resampled[r][j, sl]).float() - c).pow(2).sum(-1)  # [n] or [n, T]
                sq[r, j, sl] = diff.reshape(len(diff), -1).mean(1).double().cpu()
    per_position[positions] = sq.mean((0, 2)).float()
    total, se = mean_and_stderr(sq.sum(1) * (n_resampleable / p))
    return SensitivityEstimate(total, total / n_resampleable, per_position, se, n * p * n_repeats)


@torch.no_grad()
def cross_moments(features: Callable, x: torch.Tensor, y: torch.Tensor,
                  per_coordinate: bool = True) -> list[StabilityEstimate]:
    """Layer-wise cross moments ``E[h_l(X) . h_l(Y)]`` for paired inputs ``x, y`` (any type ``features``
    accepts); ``features`` returns a list of hidden states ``[N, T, D_l]`` (or ``[N, D_l]``). With
    ``per_coordinate`` the dot product is divided by ``D_l`` (the per-unit moment the theory predicts)."""
    hx, hy = features(x), features(y)
    out = []
    for a, b in zip(hx, hy, strict=True):
        scale = 1.0 / a.shape[-1] if per_coordinate else 1.0
        values = (inner(a, b) * scale).unsqueeze(0)
        mean, se = mean_and_stderr(values)
        self_mean = float(inner(a, a).mean()) * scale
        out.append(StabilityEstimate(mean, se, self_mean, mean / self_mean if self_mean else float("nan"), len(a)))
    return out


__all__: Sequence[str] = (
    "StabilityEstimate", "SensitivityEstimate", "noise_stability", "gaussian_stability", "average_sensitivity",
    "cross_moments", "batched", "inner", "mean_and_stderr",
)
