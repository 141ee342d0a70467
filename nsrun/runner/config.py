"""Validation of a composed nsrun config, run on the whole config before any compute starts.

Each check raises :class:`nsrun.runner.errors.ConfigError` naming the key and the allowed values; the command
line turns it into one line on stderr and exit code 2. Task-, regulariser- and schedule-specific keys
are checked by the module that owns them (see the registries in ``nsrun.science.tasks`` and
``nsrun.runner.objective``).
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig

from nsrun.runner.errors import ConfigError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
PROGRESS = ("auto", "bar", "log", "none")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def require_int(cfg, key: str, minimum: int | None = None, optional: bool = False) -> None:
    v = select(cfg, key)
    if v is None and optional:
        return
    if not _is_int(v) or (minimum is not None and v < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        none = " or null" if optional else ""
        raise ConfigError(key, f"must be an integer{bound}{none}, got {v!r}")


def require_number(cfg, key: str, low: float | None = None, high: float | None = None,
                   low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    v = select(cfg, key)
    if v is None and optional:
        return
    ok = _is_num(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        rng = f" in {lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
        raise ConfigError(key, f"must be a number{rng}{' or null' if optional else ''}, got {v!r}")


def require_choice(cfg, key: str, choices) -> None:
    v = select(cfg, key)
    if v not in choices:
        raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}, got {v!r}")


def require_bool(cfg, key: str) -> None:
    v = select(cfg, key)
    if not isinstance(v, bool):
        raise ConfigError(key, f"must be true or false, got {v!r}")


def select(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            raise ConfigError(key, "is missing from the config")
        node = node[part]
    return node


def validate_train(cfg) -> None:
    require_int(cfg, "seed", 0)
    require_int(cfg, "train.steps", 1)
    require_int(cfg, "train.eval_every", 1)
    require_int(cfg, "train.checkpoint_every", 1)
    require_int(cfg, "train.batch_size", 1, optional=True)
    require_int(cfg, "train.threads", 1, optional=True)
    require_bool(cfg, "train.deterministic")
    require_choice(cfg, "train.progress", PROGRESS)
    require_int(cfg, "train.parallel_seeds", 1)
    require_choice(cfg, "train.parallel_backend", ("auto", "vmap", "loop"))
    require_bool(cfg, "train.compile")
    if cfg.train.compile and cfg.train.parallel_seeds > 1 and cfg.train.parallel_backend != "loop":
        raise ConfigError("train.compile", "is not supported with train.parallel_seeds > 1 unless "
                          "train.parallel_backend=loop")
    device = cfg.train.device
    if not isinstance(device, str) or not DEVICE_RE.match(device):
        raise ConfigError("train.device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("train.device", f"{device} requested but no CUDA device is available; use auto or cpu")
    require_int(cfg, "eval.batch_size", 1)
    require_int(cfg, "eval.n_examples", 1, optional=True)


def validate_model(cfg) -> None:
    from nsrun.science.model import ACTIVATIONS, POS_EMBS

    for key in ("n_layers", "d_model", "n_heads", "d_mlp"):
        require_int(cfg, f"model.{key}", 1)
    if cfg.model.d_model % cfg.model.n_heads:
        raise ConfigError(
            "model.n_heads",
            f"must divide model.d_model={cfg.model.d_model}, got {cfg.model.n_heads}",
        )
    require_choice(cfg, "model.activation", tuple(ACTIVATIONS))
    require_bool(cfg, "model.layer_norm")
    require_choice(cfg, "model.pos_emb", POS_EMBS)
    require_number(cfg, "model.init_std", 0, low_open=True)


def validate_optim(cfg) -> None:
    require_choice(cfg, "optim.name", ("adamw",))
    require_number(cfg, "optim.lr", 0, low_open=True)
    betas = cfg.optim.betas
    if not isinstance(betas, ListConfig) or len(betas) != 2 or not all(_is_num(b) and 0 <= b < 1 for b in betas):
        raise ConfigError("optim.betas", f"must be two numbers in [0, 1), got {betas!r}")
    require_number(cfg, "optim.eps", 0, low_open=True)
    require_number(cfg, "optim.weight_decay", 0)
    require_int(cfg, "optim.warmup_steps", 0)
    require_number(cfg, "optim.grad_clip", 0, low_open=True, optional=True)


def validate(cfg: DictConfig) -> None:
    """Check every section of a composed config; raise ConfigError on the first bad key."""
    from nsrun.runner.objective import validate_objective
    from nsrun.runner.tracking import validate_logger
    from nsrun.science.stability.monitor import validate_monitor
    from nsrun.science.tasks import TASKS, validate_task

    require_choice(cfg, "task.name", tuple(TASKS))
    validate_task(cfg.task)
    validate_model(cfg)
    validate_optim(cfg)
    validate_train(cfg)
    validate_objective(cfg)
    validate_monitor(cfg)
    validate_logger(cfg)
