"""Junta size and Fourier-tail bounds from influence and noise stability (SCIENCE.md claim 6).

Conventions (inputs ``x`` in ``[K]^T``, each coordinate uniform over the K noise tokens; ``f`` vector valued).
Efron-Stein / Fourier decomposition ``f = sum_S f^{=S}``, weight ``W(S) = E||f^{=S}||^2``,
``W_{>=k} = sum_{|S| >= k} W(S)``, ``E||f||^2 = sum_S W(S)`` (computed in :mod:`nsrun.science.stability.spectrum`,
whose ``walsh_coefficients``, ``degree_weights`` and ``effective_correlation`` this module re-exports).

* Measured influence (what nsrun reports, as in the issue): ``Inf_i = E||f(x) - f(x^(i))||^2`` with
  ``x^(i)`` = x with token i redrawn uniformly. Since ``x_i`` and the redraw are independent,
  ``Inf_i = 2 E[Var_{x_i} f] = 2 sum_{S ∋ i} W(S)``, so the Fourier total influence is
  ``I[f] = sum_S |S| W(S) = (1/2) sum_i Inf_i`` and ``W_{>=k} <= I[f] / k``.
* Token noise (``stability.noise.token_noise``) keeps a token with probability ``(1 + rho)/2`` and otherwise
  redraws it uniformly: that is the noise operator of correlation ``r = (1 + rho)/2`` (a coordinate is
  kept for sure w.p. r, redrawn w.p. 1 - r), so ``Stab = E<f(X), f(Y)> = sum_S r^|S| W(S)`` and
  ``W_{>=k} <= (E||f||^2 - Stab) / (1 - r^k)``.

Both bounds are exact inequalities when the inputs are uniform over the noise tokens; on real text they
are the paper's heuristic estimates **[ours: the paper's exact estimator is not public]**. Reported bounds
are normalised by ``E||f||^2``.

"Literal" variants (reported beside, for comparison with the paper only): ``sum_i Inf_i / k`` (no factor 1/2:
valid but twice as loose) and ``(E||f||^2 - Stab) / (1 - rho^k)`` with the token-noise rho in place of r (NOT a
valid bound for this noise: for ``f = chi_S``, ``|S| = k``, it gives ``(1 - r^k)/(1 - rho^k) < 1 = W_{>=k}``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nsrun.science.stability.spectrum import degree_weights, effective_correlation, walsh_coefficients


def influence_bound(total_measured_influence: float, self_moment: float, k: int) -> float:
    """``W_{>=k} / E||f||^2 <= I[f] / (k E||f||^2)`` with ``I[f] = (1/2) sum_i Inf_i``."""
    return 0.5 * total_measured_influence / (k * self_moment)


def stability_bound(stability: float, self_moment: float, rho: float, k: int, literal: bool = False) -> float:
    """``W_{>=k} / E||f||^2 <= (1 - Stab / E||f||^2) / (1 - r^k)``, ``r = (1 + rho)/2`` (``r = rho`` if
    ``literal``); inf at rho = 1."""
    denominator = 1.0 - (rho if literal else effective_correlation(rho)) ** k
    if denominator <= 0:
        return math.inf
    return (1.0 - stability / self_moment) / denominator


def best_stability_bound(stabilities: Sequence[float], self_moment: float, rhos: Sequence[float],
                         k: int, literal: bool = False) -> tuple[float, float]:
    """The smallest stability bound over ``rhos``: ``(bound, rho)``."""
    bounds = [stability_bound(s, self_moment, rho, k, literal) for s, rho in zip(stabilities, rhos, strict=True)]
    best = min(range(len(bounds)), key=bounds.__getitem__)
    return bounds[best], float(rhos[best])


def junta_size(influence: torch.Tensor, fraction: float = 0.9) -> int:
    """The fewest coordinates whose influences sum to at least ``fraction`` of the total (0 if all zero)."""
    values = torch.as_tensor(influence, dtype=torch.float64).clamp_min(0).flatten()
    total = float(values.sum())
    if total <= 0:
        return 0
    cumulative = torch.cumsum(torch.sort(values, descending=True).values, 0)
    return int((cumulative < fraction * total * (1 - 1e-12)).sum()) + 1


__all__ = [
    "best_stability_bound", "degree_weights", "effective_correlation", "fourier_tail", "influence_bound", "junta_size",
    "stability_bound", "walsh_coefficients",
]


def fourier_tail(values: torch.Tensor, k: int) -> float:
    """``W_{>=k} = sum_{|S| >= k} ||fhat(S)||^2`` of ``f`` given by ``values [2^n, C]``."""
    return float(degree_weights(values)[k:].sum())
