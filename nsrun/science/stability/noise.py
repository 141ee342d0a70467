"""Noise models for an input batch (SCIENCE.md section 1).

* token noise: each resampleable position is kept with probability ``(1 + rho) / 2`` and otherwise
  replaced by a token drawn uniformly from ``noise_tokens`` (K tokens), so a position is unchanged with
  probability ``(1 + rho)/2 + (1 - rho)/(2K)``;
* single-position resampling (for average sensitivity / influence): column ``i`` replaced by uniform draws;
* Gaussian (Ornstein-Uhlenbeck) noise on embeddings: ``e' = rho e + sqrt(1 - rho^2) sigma g``, ``g ~ N(0, I)``.

Random numbers are drawn on the generator's device (a CPU generator serves any model device), so a
seeded generator gives the same noise on CPU and GPU.
"""

from __future__ import annotations

import math

import torch

from nsrun.science.stability.settings import GAUSSIAN_ON, NOISES  # noqa: F401  (defined with the settings)


def gaussian_mask(resample_mask: torch.Tensor, gaussian_on: str) -> torch.Tensor | None:
    """The ``mask`` of :func:`gaussian_noise` for ``gaussian_on``: ``resample_mask [T]``, or None (all positions)."""
    if gaussian_on not in GAUSSIAN_ON:
        raise ValueError(f"gaussian_on must be one of {', '.join(GAUSSIAN_ON)}, got {gaussian_on!r}")
    return resample_mask if gaussian_on == "resampleable" else None


def _device_of(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _uniform(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=_device_of(generator, device)).to(device)


def _uniform_tokens(shape, noise_tokens: torch.Tensor, generator) -> torch.Tensor:
    gen_device = _device_of(generator, noise_tokens.device)
    idx = torch.randint(len(noise_tokens), shape, generator=generator, device=gen_device)
    return noise_tokens[idx.to(noise_tokens.device)]


def check_rho(rho: float) -> None:
    if not 0.0 <= float(rho) <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho!r}")


def token_noise(x: torch.Tensor, rho: float, noise_tokens: torch.Tensor, resample_mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """``Y``: ``x [N, T]`` with each position where ``resample_mask [T]`` is true kept with probability
    ``(1 + rho)/2``, else replaced by a uniform draw from ``noise_tokens [K]``. Protected positions never change."""
    check_rho(rho)
    noise_tokens = noise_tokens.to(x.device)
    replace = _uniform(x.shape, generator, x.device) >= (1.0 + rho) / 2.0
    if resample_mask is not None:
        replace &= resample_mask.to(x.device).bool()
    draws = _uniform_tokens(x.shape, noise_tokens, generator)
    return torch.where(replace, draws, x)


def resample_positions(x: torch.Tensor, positions, noise_tokens: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``[P, N, T]``: for each of the P ``positions`` i, ``x`` with column i replaced by uniform draws
    from ``noise_tokens`` (the inputs ``x^(i)`` of average sensitivity)."""
    positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1).tolist()
    noise_tokens = noise_tokens.to(x.device)
    out = x.unsqueeze(0).repeat(len(positions), 1, 1)
    draws = _uniform_tokens((len(positions), x.shape[0]), noise_tokens, generator)
    for j, i in enumerate(positions):
        out[j, :, i] = draws[j]
    return out


def gaussian_noise(e: torch.Tensor, rho: float, sigma, generator: torch.Generator | None = None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """``e' = rho e + sqrt(1 - rho^2) sigma g`` with ``g ~ N(0, I)``; ``e: [N, T, D]``.
    ``mask [T]`` (optional, bool) restricts the noise to those positions; the others are returned unchanged."""
    check_rho(rho)
    g = torch.randn(e.shape, generator=generator, device=_device_of(generator, e.device)).to(e.device, e.dtype)
    noisy = rho * e + math.sqrt(max(0.0, 1.0 - rho * rho)) * sigma * g
    if mask is None:
        return noisy
    keep = ~mask.to(e.device).bool()
    return torch.where(keep.view(1, -1, *([1] * (e.dim() - 2))), e, noisy)


def embedding_scale(embedding_weight: torch.Tensor, tokens: torch.Tensor | None = None) -> float:
    """The default Gaussian-noise ``sigma`` **[ours]**: root-mean-square entry of the embeddings of
    ``tokens`` (all rows if None). With this sigma, ``E||e'||^2 = E||e||^2`` for every rho."""
    w = embedding_weight if tokens is None else embedding_weight[tokens.to(embedding_weight.device)]
    return float(w.detach().float().pow(2).mean().sqrt())
