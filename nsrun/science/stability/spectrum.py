"""The Efron-Stein (Fourier) decomposition of a vector-valued function on a product of uniform coordinates.

``f: [K]^P -> R^C`` with independent uniform coordinates decomposes as ``f = sum_S f^{=S}`` over subsets S of
the P coordinates (``f^{=S}`` depends on the coordinates in S only and has mean zero along each of them);
the weight of S is ``W(S) = E||f^{=S}||^2``, ``E||f||^2 = sum_S W(S)``, and ``W^{=d} = sum_{|S| = d} W(S)``.
Token noise (:func:`nsrun.science.stability.noise.token_noise`) keeps a coordinate with probability
``r = (1 + rho)/2`` and otherwise redraws it uniformly (possibly to the same token): it is the noise operator
of correlation r, so under the uniform measure ``Stab = E<f(X), f(Y)> = sum_S r^|S| W(S)``.

Subsets are bit masks: bit j of S is coordinate j. For K = 2 the decomposition is the Walsh (Fourier)
expansion, ``W(S) = ||fhat(S)||^2`` (:func:`walsh_coefficients`).
"""

from __future__ import annotations

import math

import torch


def effective_correlation(rho: float) -> float:
    """``r = (1 + rho)/2``: the probability that token noise keeps a coordinate without redrawing it."""
    return (1.0 + float(rho)) / 2.0


def helmert(values: torch.Tensor, dim: int) -> torch.Tensor:
    """``values`` in the orthonormal Helmert basis along ``dim`` (size K): entry 0 is ``sum_j v_j / sqrt(K)``
    (the constant direction), entry k >= 1 is ``(sum_{j<k} v_j - k v_k) / sqrt(k (k + 1))`` (mean zero).
    Orthonormal, so the squared norm along ``dim`` is kept; O(K) per fibre."""
    size = values.shape[dim]
    running = values.cumsum(dim)
    k = torch.arange(1, size, dtype=values.dtype, device=values.device)
    k = k.view(-1, *([1] * (values.dim() - (dim % values.dim()) - 1)))
    constant = running.narrow(dim, size - 1, 1) / math.sqrt(size)
    contrasts = (running.narrow(dim, 0, size - 1) - k * values.narrow(dim, 1, size - 1)) / torch.sqrt(k * (k + 1))
    return torch.cat([constant, contrasts], dim)


def efron_stein_weights(values: torch.Tensor) -> torch.Tensor:
    """``W(S) = E||f^{=S}||^2`` for every subset S (bit mask, bit j = coordinate j): ``[2^P]`` float64, from the
    values of ``f`` on the whole grid, ``values [K_0, ..., K_{P-1}, C]`` (``f(x)`` at index x).

    In the Helmert basis along every coordinate, a coefficient at multi-index ``(k_0, ..., k_{P-1})`` belongs to
    ``f^{=S}`` with ``S = {j : k_j >= 1}``; by orthonormality ``W(S)`` is the sum of its squared coefficients
    divided by the grid size. Cost O(P |grid| C)."""
    n_coordinates = values.dim() - 1
    coefficients = values.double()
    for dim in range(n_coordinates):
        coefficients = helmert(coefficients, dim)
    energy = coefficients.pow(2).sum(-1) / coefficients[..., 0].numel()
    for dim in range(n_coordinates):  # split each coordinate into [constant, rest]
        energy = torch.cat([energy.narrow(dim, 0, 1), energy.narrow(dim, 1, energy.shape[dim] - 1).sum(dim, True)],
                           dim)
    return energy.permute(*reversed(range(n_coordinates))).reshape(-1)  # flat index = sum_j b_j 2^j


def subset_sizes(n_coordinates: int) -> torch.Tensor:
    """``|S|`` for every bit mask S of ``n_coordinates`` coordinates: ``[2^P]``."""
    masks = torch.arange(2**n_coordinates)
    return ((masks.unsqueeze(1) >> torch.arange(n_coordinates)) & 1).sum(1)


def weights_by_degree(subset_weights: torch.Tensor) -> torch.Tensor:
    """``W^{=d} = sum_{|S| = d} W(S)`` for d = 0..P, from ``subset_weights [2^P]``."""
    n_coordinates = int(math.log2(len(subset_weights)))
    sizes = subset_sizes(n_coordinates)
    return torch.zeros(n_coordinates + 1, dtype=torch.float64).index_add_(0, sizes, subset_weights.double())


def stability_from_weights(subset_weights: torch.Tensor, rho: float) -> float:
    """``sum_S r^|S| W(S)``, ``r = (1 + rho)/2``: token-noise stability under the uniform measure."""
    by_degree = weights_by_degree(subset_weights)
    r = effective_correlation(rho)
    return float(sum(r**d * w for d, w in enumerate(by_degree.tolist())))


def walsh_coefficients(values: torch.Tensor) -> torch.Tensor:
    """Fourier (Walsh) coefficients of ``f: {0,1}^n -> R^C`` on the uniform cube.

    ``values [2^n, C]`` lists ``f(x)`` with ``x_i`` = bit i of the row index; returns ``fhat [2^n, C]``,
    row ``S`` (a bit mask) holding ``fhat(S) = E_x f(x) (-1)^{sum_{i in S} x_i}``."""
    n = int(math.log2(values.shape[0]))
    if 2**n != values.shape[0]:
        raise ValueError(f"need 2^n rows, got {values.shape[0]}")
    coefficients = values.double().clone().reshape(2**n, -1)
    h = 1
    while h < 2**n:
        view = coefficients.view(-1, 2, h, coefficients.shape[-1])
        a, b = view[:, 0].clone(), view[:, 1].clone()
        view[:, 0], view[:, 1] = a + b, a - b
        h *= 2
    return coefficients / 2**n


def degree_weights(values: torch.Tensor) -> torch.Tensor:
    """``W^{=d} = sum_{|S| = d} ||fhat(S)||^2`` for d = 0..n, from ``values [2^n, C]``."""
    return weights_by_degree(walsh_coefficients(values).pow(2).sum(-1))
