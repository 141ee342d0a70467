"""``optim``: the optimiser (AdamW) and its learning-rate warm-up."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from nsrun.runner.config.checks import at_least, in_range
from nsrun.runner.config.schema import GROUPS, option, section
from nsrun.runner.errors import ConfigError

GROUPS["optim"] = "the optimiser: AdamW's learning rate, betas, weight decay, warm-up and gradient clipping"


@option("optim", "adamw")
@dataclass
class AdamWConfig:
    """AdamW with a linear learning-rate warm-up from 0 over warmup_steps."""

    name: str = "adamw"
    lr: float = in_range(0, low_open=True)
    betas: list[float] = MISSING
    eps: float = in_range(0, low_open=True)
    weight_decay: float = in_range(0)
    warmup_steps: int = at_least(0)
    grad_clip: float | None = in_range(0, low_open=True)

    def check(self) -> None:
        betas = self.betas
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError("optim.betas", f"must be two numbers in [0, 1), got {betas!r}")


def make_optimizer(params, cfg, device):
    """AdamW on ``device`` (a torch.device); the fused kernel on CPU and CUDA (one kernel for all parameters:
    same update up to float rounding, faster for small models; docs/performance.md)."""
    import torch

    o = section(cfg, "optim")
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                             fused=True if device.type in ("cpu", "cuda") else None)


def lr_lambda(warmup_steps: int):
    """The learning-rate factor at step s: ``min(1, (s + 1) / warmup_steps)``, 1 without warm-up."""
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0
