"""The science of nsrun: noise models, stability and sensitivity estimators, the regulariser, noise
schedules and the theory of SCIENCE.md sections 1-4. Nothing here imports the runner
(``nsrun.commands.nsrun``, ``nsrun.runner.train``, ``nsrun.runner.tracking``)."""

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
