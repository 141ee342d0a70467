"""The science of nsrun: noise models, stability and sensitivity estimators, the regulariser, noise
schedules and the theory of SCIENCE.md sections 1-4. It takes plain values and imports none of the layers
above it (runner, launch, analysis, commands: docs/architecture.md)."""

from nsrun.science.stability.estimators import (
    SensitivityEstimate,
    StabilityEstimate,
    average_sensitivity,
    cross_moments,
    gaussian_stability,
    noise_stability,
)
from nsrun.science.stability.noise import gaussian_noise, resample_positions, token_noise

__all__ = [
    "SensitivityEstimate", "StabilityEstimate", "average_sensitivity", "cross_moments", "gaussian_stability",
    "noise_stability", "gaussian_noise", "resample_positions", "token_noise",
]
