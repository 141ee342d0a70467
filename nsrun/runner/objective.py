"""The science objects built from a config: the model, and the training objective (cross-entropy, plus the
regulariser chosen by ``reg.name``). A temporary home: the config schema package replaces it.

An objective is called once per step as ``loss, stats = objective(model, x, y, step)`` and returns the
scalar to minimise and a dict of floats to log. ``reg=none`` is plain cross-entropy; the noise-stability
regulariser lives in the science package (``nsrun.science.stability``) and registers itself here.
"""

from __future__ import annotations

from nsrun.runner.config import require_choice, require_number
from nsrun.runner.errors import ConfigError


class CrossEntropy:
    """``loss = CE(M(X), target)``."""

    def __init__(self, task):
        self.task = task

    def __call__(self, model, x, y, step: int):
        loss = self.task.loss(model(x), y)
        return loss, {"ce": loss.detach()}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_model(cfg_model, task):
    """The transformer of ``cfg.model`` for ``task`` (its vocabulary, outputs, length and masking)."""
    from nsrun.science.model import Transformer

    return Transformer(
        vocab_size=task.vocab_size,
        n_outputs=task.n_outputs,
        seq_len=task.seq_len,
        n_layers=cfg_model.n_layers,
        d_model=cfg_model.d_model,
        n_heads=cfg_model.n_heads,
        d_mlp=cfg_model.d_mlp,
        activation=cfg_model.activation,
        layer_norm=cfg_model.layer_norm,
        pos_emb=cfg_model.pos_emb,
        causal=task.causal,
        init_std=cfg_model.init_std,
        last_position_only=task.kind == "classification",
    )


def _validate_none(cfg) -> None:
    pass


def _validate_grokfast(cfg) -> None:
    from nsrun.science.peers import validate_grokfast

    validate_grokfast(cfg)


def _build_grokfast(cfg, task):
    from nsrun.science.peers import build_grokfast

    return build_grokfast(cfg, task)


def _validate_stability(cfg) -> None:
    from nsrun.science.stability.regulariser import validate

    validate(cfg)


def _build_stability(cfg, task):
    from nsrun.science.stability.regulariser import build

    return build(cfg, task)


def _validate_schedule(cfg) -> None:
    from nsrun.science.stability.schedules import validate_schedule

    validate_schedule(cfg)


# reg.name -> (validate(cfg), build(cfg, task) -> objective). An objective may define
# ``after_backward(model)``, called between backward and the optimiser step (gradient filters), and
# ``log_stats() -> dict``, whose means since the last eval are added to the eval row (``reg_term``).
REGULARISERS = {
    "none": (_validate_none, lambda cfg, task: CrossEntropy(task)),
    "grokfast": (_validate_grokfast, _build_grokfast),
    "weight_decay": (_validate_none, lambda cfg, task: CrossEntropy(task)),  # the strength is optim.weight_decay
    "stability": (_validate_stability, _build_stability),
}
# noise.name -> validate(cfg); the schedules themselves are in nsrun.science.stability.schedules
SCHEDULES = {
    "constant": _validate_schedule,
    "linear_warmup": _validate_schedule,
    "cosine": _validate_schedule,
    "step": _validate_schedule,
}


def validate_objective(cfg) -> None:
    require_choice(cfg, "reg.name", tuple(REGULARISERS))
    require_number(cfg, "reg.rho", 0, 1)
    require_number(cfg, "reg.gamma", 0)
    if "noise" not in cfg or "name" not in cfg.noise:
        raise ConfigError("noise", f"must select a schedule, one of {', '.join(SCHEDULES)}")
    require_choice(cfg, "noise.name", tuple(SCHEDULES))
    SCHEDULES[cfg.noise.name](cfg)
    REGULARISERS[cfg.reg.name][0](cfg)


def build_objective(cfg, task):
    return REGULARISERS[cfg.reg.name][1](cfg, task)
