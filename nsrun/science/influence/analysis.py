"""Per-token influence, junta size, noise stability and Fourier-tail bounds of any ``f: tokens [N, T] -> [N, C]``.

* ``Inf_i = E||f(x) - f(x^(i))||^2`` per input and position (``x^(i)``: token i redrawn uniformly from the
  noise tokens; protected positions have Inf_i = 0); total influence (average sensitivity)
  ``AS = sum_i Inf_i``, averaged over inputs.
* Junta size: the fewest positions carrying ``junta_fraction`` of the total mean influence.
* ``Stab_rho = E<f(X), f(Y)>`` under token noise for each rho, and the bounds of :mod:`nsrun.science.influence.fourier`
  on ``W_{>=k} / E||f||^2``: ``AS / (2 k E||f||^2)`` and ``min_rho (1 - Stab_rho / E||f||^2) / (1 - r^k)``.

Estimates reuse :func:`nsrun.science.stability.estimators.average_sensitivity` (one input at a time, its
resampled copies in batches) and :func:`nsrun.science.stability.estimators.noise_stability`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from nsrun.science.influence.fourier import best_stability_bound, effective_correlation, influence_bound, junta_size
from nsrun.science.influence.fourier import stability_bound as stability_bound_at
from nsrun.science.stability.estimators import StabilityEstimate, average_sensitivity, mean_and_stderr, noise_stability


def per_input_influence(f: Callable, x: torch.Tensor, noise_tokens: torch.Tensor,
                        resample_mask: torch.Tensor | None = None, n_repeats: int = 1,
                        generator: torch.Generator | None = None, batch_size: int | None = None,
                        progress: Callable[[Iterable], Iterable] = iter) -> torch.Tensor:
    """``[N, T]``: ``Inf_i`` of each input ``x[n]`` (averaged over ``n_repeats`` redraws), 0 where protected."""
    rows = [average_sensitivity(f, x[j : j + 1], noise_tokens, resample_mask, n_repeats, generator,
                                batch_size).per_position for j in progress(range(len(x)))]
    return torch.stack(rows)


@dataclass
class InfluenceResult:
    per_input: torch.Tensor  # [N, T] Inf_i per input
    resample_mask: torch.Tensor  # [T] bool
    rhos: list[float]
    stability: list[StabilityEstimate]
    k: int
    junta_fraction: float

    @property
    def mean(self) -> torch.Tensor:
        """``[T]`` Inf_i averaged over inputs."""
        return self.per_input.mean(0)

    @property
    def self_moment(self) -> float:
        """``E||f(X)||^2`` over the inputs."""
        return self.stability[0].self_mean

    def junta_positions(self) -> list[int]:
        """The positions of the junta, most influential first."""
        size = junta_size(self.mean, self.junta_fraction)
        return torch.argsort(self.mean, descending=True)[:size].tolist()

    def stability_bounds(self) -> list[float]:
        return [stability_bound_at(s.mean, self.self_moment, rho, self.k) for s, rho in zip(self.stability, self.rhos,
                                                                                          strict=True)]

    def summary(self) -> dict:
        """The scalar results (one table row)."""
        mean = self.mean
        positions = torch.nonzero(self.resample_mask).flatten()
        total, total_se = mean_and_stderr(self.per_input.sum(1).unsqueeze(0))
        bound_influence = influence_bound(total, self.self_moment, self.k)
        bound_stability, best_rho = best_stability_bound([s.mean for s in self.stability], self.self_moment,
                                                         self.rhos, self.k)
        literal_influence = 2 * bound_influence
        literal_stability, literal_rho = best_stability_bound([s.mean for s in self.stability], self.self_moment,
                                                              self.rhos, self.k, literal=True)
        per_input_juntas = torch.tensor([junta_size(row, self.junta_fraction) for row in self.per_input])
        share = (lambda i: float(mean[i]) / total if total > 0 else math.nan)
        return {
            "n_inputs": self.per_input.shape[0],
            "seq_len": self.per_input.shape[1],
            "n_resampleable": len(positions),
            "total_influence": total,
            "total_influence_stderr": total_se,
            "mean_influence_per_position": total / max(len(positions), 1),
            "junta_fraction": self.junta_fraction,
            "junta_size": junta_size(mean, self.junta_fraction),
            "junta_size_per_input_median": float(per_input_juntas.float().median()),
            "junta_positions": self.junta_positions(),
            "first_position": int(positions[0]),
            "last_position": int(positions[-1]),
            "first_share": share(positions[0]),
            "last_share": share(positions[-1]),
            "self_moment": self.self_moment,
            "k": self.k,
            "influence_bound": bound_influence,
            "stability_bound": bound_stability,
            "best_rho": best_rho,
            "bound_ratio": bound_influence / bound_stability if bound_stability > 0 else math.inf,
            "influence_bound_literal": literal_influence,
            "stability_bound_literal": literal_stability,
            "best_rho_literal": literal_rho,
            "bound_ratio_literal": literal_influence / literal_stability if literal_stability > 0 else math.inf,
            "stability": {f"{rho:g}": s.normalised for rho, s in zip(self.rhos, self.stability, strict=True)},
        }

    def stability_rows(self) -> list[dict]:
        return [{"rho": rho, "r_effective": effective_correlation(rho), "stability": s.mean, "stderr": s.stderr,
                 "self_moment": s.self_mean, "normalised": s.normalised, "stability_bound": bound}
                for rho, s, bound in zip(self.rhos, self.stability, self.stability_bounds(), strict=True)]


def analyse(f: Callable, x: torch.Tensor, noise_tokens: torch.Tensor, resample_mask: torch.Tensor,
            rhos: Sequence[float], k: int = 15, junta_fraction: float = 0.9, influence_repeats: int = 1,
            stability_repeats: int = 1, generator: torch.Generator | None = None, batch_size: int | None = None,
            progress: Callable[[Iterable, str], Iterable] = lambda items, _: items) -> InfluenceResult:
    """Influence of every position of every input, then stability at each rho, of ``f`` on ``x [N, T]``."""
    resample_mask = resample_mask.bool().cpu()
    per_input = per_input_influence(f, x, noise_tokens, resample_mask, influence_repeats, generator, batch_size,
                                    progress=lambda items: progress(items, "influence (inputs)"))
    stability = [noise_stability(f, x, rho, noise_tokens, resample_mask, stability_repeats, generator, batch_size)
                 for rho in progress(list(rhos), "stability (rho)")]
    return InfluenceResult(per_input, resample_mask, [float(r) for r in rhos], stability, k, junta_fraction)
