"""Junta-like input dependence of pretrained language models (SCIENCE.md claim 6): per-token influence,
junta size, noise stability and the two bounds on the high-degree Fourier weight. The science
(:mod:`~nsrun.science.influence.fourier`, :mod:`~nsrun.science.influence.analysis`) does not import the runner;
models are loaded with ``transformers`` (the optional extra ``llm``) only in :mod:`~nsrun.science.influence.lm`."""

from nsrun.science.influence.analysis import InfluenceResult, analyse, per_input_influence
from nsrun.science.influence.fourier import (
    best_stability_bound,
    degree_weights,
    effective_correlation,
    fourier_tail,
    influence_bound,
    junta_size,
    stability_bound,
    walsh_coefficients,
)

__all__ = [
    "InfluenceResult", "analyse", "per_input_influence", "best_stability_bound", "degree_weights",
    "effective_correlation", "fourier_tail", "influence_bound", "junta_size", "stability_bound", "walsh_coefficients",
]
