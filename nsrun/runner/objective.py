"""The science objects built from a config: task, model, training objective (cross-entropy, plus the
regulariser chosen by ``reg.name``, its noise following the ``noise`` schedule) and the stability monitor's
settings. A temporary home: the config schema package (``nsrun.runner.config``) replaces it.
"""

from __future__ import annotations

from nsrun.runner.config import require_choice, require_number
from nsrun.runner.errors import ConfigError
from nsrun.science.objective import CrossEntropy


def build_task(cfg_task):
    """The task of ``cfg.task``: its constructor's keywords from the section (the ``train.*`` defaults a task
    file may set are not the task's). A ValueError ``"<argument>: ..."`` becomes a ConfigError on
    ``task.<argument>``."""
    import inspect

    from nsrun.science.tasks import task_class

    cls = task_class(cfg_task.name)
    kwargs = {k: cfg_task[k] for k in inspect.signature(cls).parameters if k in cfg_task}
    try:
        return cls(**kwargs)
    except ValueError as e:
        argument, sep, detail = str(e).partition(": ")
        if sep and argument in kwargs:
            raise ConfigError(f"task.{argument}", detail) from e
        raise


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


def build_schedule(cfg):
    """The noise schedule ``step -> (rho, gamma)`` of ``cfg.noise`` around ``reg.rho`` and ``reg.gamma``."""
    from nsrun.science.stability.schedules import Schedule

    keys = {k: v for k, v in cfg.noise.items() if k != "name"}
    return Schedule(cfg.noise.name, cfg.reg.rho, cfg.reg.gamma, cfg.train.steps, **keys)


def monitor_settings(cfg):
    """The stability monitor's settings, or None when ``stability.enabled`` is false (or the section is absent)."""
    from nsrun.science.stability.monitor import MonitorSettings

    if "stability" not in cfg or not cfg.stability.enabled:
        return None
    s = cfg.stability
    return MonitorSettings(rhos=tuple(s.rhos), noises=tuple(s.noises), splits=tuple(s.splits),
                           n_examples=s.n_examples, n_repeats=s.n_repeats, sensitivity=s.sensitivity,
                           sensitivity_positions=s.get("sensitivity_positions"), per_layer=s.per_layer,
                           sigma=s.sigma, gaussian_on=s.gaussian_on)


def _validate_none(cfg) -> None:
    pass


def _validate_grokfast(cfg) -> None:
    from nsrun.science.peers import validate_grokfast

    validate_grokfast(cfg)


def _build_grokfast(cfg, task):
    from nsrun.science.peers import GrokFastEMA

    return GrokFastEMA(task, alpha=cfg.reg.alpha, lamb=cfg.reg.lamb)


def _validate_stability(cfg) -> None:
    from nsrun.science.stability.regulariser import validate

    validate(cfg)


def _build_stability(cfg, task):
    from nsrun.science.stability.regulariser import StabilityRegulariser

    r = cfg.reg
    return StabilityRegulariser(task, build_schedule(cfg), S=r.S, noise=r.noise, stop_grad_clean=r.stop_grad_clean,
                                batch_fraction=r.batch_fraction, sigma=r.sigma, gaussian_on=r.gaussian_on,
                                seed=cfg.seed)


def _validate_schedule(cfg) -> None:
    from nsrun.science.stability.schedules import validate_schedule

    validate_schedule(cfg)


# reg.name -> (validate(cfg), build(cfg, task) -> objective); objectives are described in nsrun.science.objective
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
